"""``python -m sde_diffusion`` runs the ``sdediff`` command line."""

from sdediff_cli.entry import run

if __name__ == "__main__":
    run()
