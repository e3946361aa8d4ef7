"""Code shared by the captioning stages (steps/*/transform and model/train).

The stages load this folder by path as the package ``captioning_common`` (see ``load_common`` in each script), so
it needs no installation and never collides with another package named ``common``. Modules:

* ``pngio``     a small PNG encoder/decoder (zlib + numpy; no Pillow);
* ``features``  the image feature extractor (deterministic, no pretrained weights);
* ``captions``  caption TSV parsing, image keys, tokenization, BLEU-4 and exact match (numpy only);
* ``params``    reading the stage's JSON params from ``$TRAINYARD_PARAMS``;
* ``tfdevices`` the "which devices did TensorFlow see" log line (imports TensorFlow; train and predict only).
"""
