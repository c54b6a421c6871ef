"""Pictures: tiles land where they should; files are real PNGs, written atomically."""

import matplotlib.image
import torch

from sde_diffusion.plotting import image_grid, save_error_plot, save_image_grid, save_samples


def test_image_grid_places_each_image_in_its_tile():
    x = torch.stack([torch.full((1, 4, 4), v) for v in torch.linspace(-1, 1, 5)])
    grid = image_grid(x)
    assert grid.shape == (2 * 6, 3 * 6, 1)  # 5 tiles on a 2x3 grid, 1-pixel borders
    for i in range(5):
        r, c = divmod(i, 3)
        tile = grid[r * 6 + 1 : r * 6 + 5, c * 6 + 1 : c * 6 + 5, 0]
        torch.testing.assert_close(tile, torch.full((4, 4), (x[i, 0, 0, 0].item() + 1) / 2))
    assert grid[0, :, 0].eq(0).all()  # a dark border
    assert grid[6:, 12:, 0].eq(0).all()  # the empty sixth tile


def test_pictures_are_png_files(tmp_path):
    save_image_grid(torch.rand(10, 1, 8, 8) * 2 - 1, tmp_path / "g.png")
    save_samples(torch.randn(100, 2), tmp_path / "s.png", reference=torch.randn(50, 2))
    rows = [{"solver": "a", "nfe": n, "error": 1 / n} for n in (5, 10, 20)]
    save_error_plot(rows, tmp_path / "e.png")
    for name in ("g.png", "s.png", "e.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png", "g.png", "s.png"]  # no temps
