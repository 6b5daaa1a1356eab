"""``rio depth INPUT OUTPUT``: tiledepth as a rasterio CLI plugin.

Registered under the ``rasterio.rio_plugins`` entry point group (see
pyproject.toml), so that ``rio`` lists it once tiledepth is installed. Its
options are ``tiledepth run``'s own (the same definitions, from
:mod:`tiledepth.cli_options`), so the two never drift apart; only the output is
a second argument, in rio's style.
"""

from __future__ import annotations

import contextlib
import logging

import click

from tiledepth import cli
from tiledepth.cli_options import RUN, options
from tiledepth.options import FLAGS_ELSEWHERE

__all__ = ["depth"]

#: ``tiledepth run``'s flags that ``rio depth`` does not have, as a config's keys; a config
#: that holds one (or one of ``batch``'s, :data:`tiledepth.cli.BATCH_ONLY`) is refused saying
#: so and what to use instead (:data:`FLAGS_ELSEWHERE`, :func:`_instead`), not told to give
#: the flag on the command line.
NOT_HERE = ("mosaic", "split")
INSTEAD = ("it writes one INPUT to one OUTPUT: to fuse several rasters use `tiledepth run "
           "INPUT... --mosaic --output OUT.tif` (--split: one output per input, OUT a folder) "
           "or `tiledepth batch INPUT... --mosaic --output-dir DIR`")


def _instead(config: str, flags: list[str]) -> str:
    """What to do with ``flags`` found in ``rio depth``'s config: :data:`INSTEAD` for
    ``--mosaic`` and ``--split``; for ``batch``'s, that they are batch's and how to give them
    there (``cli._batch_flags``), as ``tiledepth run`` says.

    Examples
    --------
    >>> print(_instead("c.yaml", ["--shard"]))
    it is a flag of `tiledepth batch`: give it there (`tiledepth batch INPUT... --output-dir
    DIR --config c.yaml --shard ...`)
    """
    batch = [flag for flag in flags if flag.lstrip("-").replace("-", "_") in cli.BATCH_ONLY]
    if not batch:
        return INSTEAD
    said = cli._batch_flags(config, batch, named=len(batch) < len(flags),
                            output="--output-dir")  # (its messages' -o reads OUTPUT)
    return said if len(batch) == len(flags) else f"{INSTEAD}; {said}"


@click.command("depth", short_help="Seamless depth map of a raster (tiledepth).")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.argument("output", type=click.Path(path_type=str))
@options(*(name for name in RUN if name not in ("output", *NOT_HERE)))
@click.pass_context
def depth(ctx, input, output, **options):
    """Estimate depth for INPUT and write OUTPUT, a GeoTIFF on INPUT's grid.

    The options are those of `tiledepth run` (see `tiledepth run --help`).
    """
    token = cli.OUTPUT_NAMED.set("OUTPUT")  # its messages name OUTPUT, not -o
    elsewhere = FLAGS_ELSEWHERE.set(("rio depth", (*NOT_HERE, *cli.BATCH_ONLY), _instead))
    # tiledepth's log lines as `tiledepth run` prints them (tiledepth: WARNING: ...), not in
    # the format of the root logger's handler that rio set up (WARNING:tiledepth.engine:...),
    # which the command's own logging.basicConfig leaves as it is; their URLs redacted as there
    own = logging.getLogger("tiledepth")
    handler = logging.StreamHandler()  # stderr now (a test runner's too)
    handler.setFormatter(logging.Formatter(cli.LOG_FORMAT))
    handler.addFilter(cli._redacting)
    own.addHandler(handler)
    propagate, own.propagate = own.propagate, False  # (not twice: rio's handler too)
    try:
        # in the rasterio.Env of rio's own options (--aws-profile, --aws-no-sign-requests,
        # --aws-requester-pays, -v's CPL_DEBUG), which rio's commands enter: ctx.obj["env"];
        # none where the command runs without rio's group (a test's CliRunner)
        with (ctx.obj or {}).get("env") or contextlib.nullcontext():
            ctx.invoke(cli.run, input=(input,), output=output, **options)
    finally:
        own.propagate = propagate
        own.removeHandler(handler)
        FLAGS_ELSEWHERE.reset(elsewhere)
        cli.OUTPUT_NAMED.reset(token)

