"""``python -m sde_diffusion`` runs the ``sdediff`` command line."""

from sdediff_cli.main import main

if __name__ == "__main__":
    main()
