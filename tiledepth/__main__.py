"""``python -m tiledepth``: the ``tiledepth`` command, where its script is not on the PATH."""

from tiledepth.cli import main

if __name__ == "__main__":
    main(prog_name="tiledepth")
