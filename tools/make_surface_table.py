"""Write src/surfels.py: the surface elements of every 2×2×2 neighbourhood, for surface distances.

    pip install scikit-image && python tools/make_surface_table.py > src/surfels.py

For each of the 256 inside/outside patterns of a 2×2×2 cube of voxels, classic (Lorensen) marching
cubes at level 0.5 gives the triangles of the surface through that cube; of a pattern and its
complement (the same surface seen from the other side) the triangulation with the smaller area is
kept for both. Each triangle is stored as its area vector in the unit cube (half the cross product of
two edges; multiples of 1/8, stored ×8 without sign): with voxel spacing (s0, s1, s2) a triangle's
area is the norm of that vector scaled by (s1·s2, s0·s2, s0·s1). This reproduces, pattern for
pattern, the table of DeepMind's surface-distance that the official BraTS scorer uses
(tests/test_metrics.py compares them at several spacings). Needs scikit-image, only here.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import marching_cubes

# bit of each corner in a neighbourhood code, as src/metrics.py computes codes
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def area_vectors(code: int) -> np.ndarray:
    cube = (np.bitwise_and(code, KERNEL) > 0).astype(float)
    if cube.min() == cube.max():
        return np.zeros((0, 3))
    v, f, _, _ = marching_cubes(cube, 0.5, method="lorensen", allow_degenerate=True)
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]) / 2


def main() -> None:
    vectors = [area_vectors(c) for c in range(256)]
    area = [np.linalg.norm(v, axis=1).sum() for v in vectors]
    rows = []
    for code in range(256):
        chosen = vectors[code if area[code] <= area[255 - code] + 1e-12 else 255 - code]
        digits = np.zeros((4, 3), int)
        digits[: len(chosen)] = np.rint(np.abs(chosen) * 8).astype(int)
        assert np.allclose(np.abs(chosen) * 8, digits[: len(chosen)]) and digits.max() <= 9
        rows.append("".join(map(str, digits.ravel())))
    lines = [" ".join(rows[i:i + 8]) for i in range(0, 256, 8)]
    print('"""Surface elements of the 256 patterns of a 2×2×2 voxel neighbourhood: written by\n'
          'tools/make_surface_table.py (marching cubes), read by src/metrics.py. Code c, triangle t, axis a\n'
          'is digit 12·c + 3·t + a of TABLE: |area vector| × 8 in the unit cube, up to 4 triangles a code."""\n')
    print("TABLE = (")
    for line in lines:
        print(f'    "{line} "')
    print(").replace(\" \", \"\")")


if __name__ == "__main__":
    main()
