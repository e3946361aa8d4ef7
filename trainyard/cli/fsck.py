"""`trainyard fsck [--repair]`: verify every blob and every reference of the store; quarantine corrupt blobs."""

from typing import Annotated

import typer

from trainyard.cli.context import Session
from trainyard.cli.options import App
from trainyard.cli.output import print_json, print_table, say
from trainyard.errors import DamageFound

app = App()


@app.command("fsck")
def fsck(session: Session, repair: Annotated[bool, typer.Option(
        "--repair", help="quarantine corrupt blobs (and mark missing ones), so putting the data again restores "
                         "them; nothing that is sound is ever deleted")] = False) -> int:
    """Verify every blob and every reference; exit 7 on damage.

    Re-hashes every blob and follows every reference: commits, runs, models, the registry, datum, provenance and
    Pachyderm records. --repair quarantines corrupt blobs, so putting the data again restores them."""
    from trainyard import fsck as checker  # pydantic records load only when fsck runs

    store = session.store
    report = checker.check(store, repair=repair, quiet=session.json)
    if session.json:
        print_json(report.model_dump(mode="json") | {"needs_upload": [d.key for d in report.needs_upload]})
    else:
        print_table([{"check": name, "count": value} for name, value in report.counts().items()], ["check", "count"])
        if report.damaged:
            print()
            print_table([{"object": d.key, "problem": d.kind + (f" ({d.detail})" if d.detail else ""),
                          "commits": ", ".join(d.commits) or "-", "models": ", ".join(d.models) or "-",
                          "other users": ", ".join(d.others) or "-",
                          **({"repair": d.action or "-"} if repair else {})} for d in report.damaged],
                        ["object", "problem", "commits", "models", "other users", *(["repair"] if repair else [])])
            for damage in report.needs_upload:
                for path in damage.paths:
                    say(f"put again: {path} (its blob {damage.key} is {'quarantined' if repair else damage.kind})")
    if not report.damaged:
        if not session.json:
            say(f"fsck: {store.uri} is sound ({report.blobs} blobs, {report.references} references, "
                f"{report.seconds:.1f} s)")
        return 0
    fix = ("put the data again (`trainyard data put` or `trainyard deploy --upload-only`) to restore the "
           "quarantined or missing blobs" if repair else "run `trainyard fsck --repair`, then put the data again")
    raise DamageFound(f"{len(report.damaged)} damaged object(s) in {store.uri}; {fix}")
