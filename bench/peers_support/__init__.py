"""Support files of bench/peers: the Metaflow flow, the kfp.local pipeline, the shared training call and the report."""
