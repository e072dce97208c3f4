"""Tiny synthetic WILDS layouts on disk, for tests, examples and smoke runs.

Each function writes files in exactly the format the real ``wilds`` loaders read
(same file names, columns and version file), filled with small generated data that
carries a spurious correlation: in the training split the label mostly agrees with
the spurious attribute, in val/test the groups are balanced. Nothing here is real
data; numbers measured on it only show that the pipeline runs.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._requirements import import_optional
from .._validation import NON_NEGATIVE_INT, POSITIVE_INT, RANDOM_STATE, check_param
from .datasets import _CIVIL_AUXILIARY, _CIVIL_IDENTITIES, dataset_spec

__all__ = [
    "DEFAULT_GROUP_COUNTS",
    "SMOKE_GROUP_COUNTS",
    "make_synthetic_celeba",
    "make_synthetic_civilcomments",
    "make_synthetic_layout",
    "make_synthetic_waterbirds",
]

_UNKNOWN = "No synthetic layout for {name!r}; choose one of {names}."
_BAD_COUNTS = "group_counts must map split -> 4 non-negative integer counts; got {!r}."

#: Per split, counts of groups (y=0,a=0), (y=0,a=1), (y=1,a=0), (y=1,a=1), where a is
#: the spurious attribute. Training is 87.5 % aligned (a == y), val/test balanced.
DEFAULT_GROUP_COUNTS: dict[str, tuple[int, int, int, int]] = {
    "train": (28, 4, 4, 28),
    "val": (6, 6, 6, 6),
    "test": (6, 6, 6, 6),
}
#: Group counts written by ``rest-fair wilds --synthetic`` where the default layout is too
#: small to learn from in a smoke run: 64 comments give one optimizer step per epoch, so
#: CivilComments gets 512 training comments (the same 87.5 % alignment). Image layouts
#: are learnable at the default size.
SMOKE_GROUP_COUNTS: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "civilcomments": {"train": (224, 32, 32, 224), "val": (24, 24, 24, 24),
                      "test": (24, 24, 24, 24)},
}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_CELEBA_ATTRS = ("5_o_Clock_Shadow", "Blond_Hair", "Male", "Smiling", "Young")


def make_synthetic_layout(
    name: str,
    root_dir: str | os.PathLike,
    *,
    group_counts: Mapping[str, tuple[int, int, int, int]] | None = None,
    image_size: int = 16,
    seed: int = 0,
) -> Path:
    """Write a tiny synthetic copy of a WILDS dataset under ``root_dir``.

    Parameters
    ----------
    name : {"waterbirds", "celebA", "civilcomments"}
        Which layout to write (case-insensitive).
    root_dir : path
        WILDS root; the data goes to ``root_dir/<name>_v1.0/``.
    group_counts : mapping, optional
        Split -> counts of the four (label, spurious attribute) groups
        ``(0,0), (0,1), (1,0), (1,1)``. Default :data:`DEFAULT_GROUP_COUNTS`.
    image_size : int, default=16
        Side of the generated images (image datasets only).
    seed : int, default=0
        Seed of the generator.

    Returns
    -------
    pathlib.Path
        The data directory.
    """
    makers = {
        "waterbirds": make_synthetic_waterbirds,
        "celeba": make_synthetic_celeba,
        "civilcomments": make_synthetic_civilcomments,
    }
    key = str(name).lower()
    if key not in makers:
        raise ValueError(_UNKNOWN.format(name=name, names=sorted(makers)))
    kwargs: dict = {"group_counts": group_counts, "seed": seed}
    if key != "civilcomments":
        kwargs["image_size"] = image_size
    return makers[key](root_dir, **kwargs)


def _rows(group_counts, rng):
    """(split id, y, a) for every sample, shuffled within the whole table."""
    counts = dict(DEFAULT_GROUP_COUNTS if group_counts is None else group_counts)
    rows = []
    for split, c in counts.items():
        if split not in _SPLIT_IDS or len(c) != 4 or not all(map(NON_NEGATIVE_INT.accepts, c)):
            raise ValueError(_BAD_COUNTS.format(dict(counts)))
        for (y, a), n in zip(((0, 0), (0, 1), (1, 0), (1, 1)), c, strict=True):
            rows += [(_SPLIT_IDS[split], y, a)] * int(n)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return rows[rng.permutation(len(rows))]


def _image(rng, size, *, background, foreground, fg_shape):
    """RGB uint8 image: noisy background colour with a central foreground patch."""
    img = np.full((size, size, 3), background, dtype=np.float64)
    img += rng.normal(0, 12, img.shape)
    lo, hi = size // 4, size - size // 4
    if fg_shape == "square":
        img[lo:hi, lo:hi] = foreground
    else:  # a horizontal bar
        img[size // 2 - max(1, size // 8) : size // 2 + max(1, size // 8), lo:hi] = foreground
    return np.clip(img, 0, 255).astype(np.uint8)


def _layout(root_dir: str | os.PathLike, name: str, seed: int,
            group_counts: Mapping[str, tuple[int, int, int, int]] | None,
            image_size: int = 1) -> tuple[np.random.Generator, np.ndarray, Path]:
    """The generator of ``seed``, the rows of :func:`_rows` and the data directory, created
    once the arguments are checked (its version file is written by :func:`_complete` once
    the rest is)."""
    check_param("seed", seed, RANDOM_STATE[1:])
    check_param("image_size", image_size, [POSITIVE_INT])
    rng = np.random.default_rng(seed)
    rows = _rows(group_counts, rng)
    data_dir = Path(root_dir) / dataset_spec(name).dirname
    data_dir.mkdir(parents=True, exist_ok=True)
    return rng, rows, data_dir


def _complete(data_dir: Path, name: str) -> Path:
    """Write the version file of the layout in ``data_dir``, the one that marks it complete
    (``rest-fair wilds --synthetic`` writes a layout that has none)."""
    (data_dir / dataset_spec(name).release_file).write_text(
        "synthetic layout written by rest_fair\n")
    return data_dir


def make_synthetic_waterbirds(
    root_dir: str | os.PathLike,
    *,
    group_counts: Mapping[str, tuple[int, int, int, int]] | None = None,
    image_size: int = 16,
    seed: int = 0,
) -> Path:
    """Synthetic ``waterbirds_v1.0``: bird shape = label, background colour = place.

    See :func:`make_synthetic_layout` for the parameters.
    """
    import pandas as pd

    Image = import_optional("PIL.Image", extra="wilds", package="pillow",
                            caller="make_synthetic_layout")

    rng, rows, data_dir = _layout(root_dir, "waterbirds", seed, group_counts, image_size)
    records = []
    for i, (split, y, place) in enumerate(rows):
        species = "001.Synthetic_Landbird" if y == 0 else "002.Synthetic_Waterbird"
        rel = f"{species}/bird_{i:05d}.png"
        (data_dir / species).mkdir(exist_ok=True)
        pixels = _image(
            rng,
            image_size,
            background=(60, 140, 60) if place == 0 else (50, 90, 200),
            foreground=(230, 200, 40) if y == 0 else (245, 245, 245),
            fg_shape="square" if y == 0 else "bar",
        )
        Image.fromarray(pixels).save(data_dir / rel)
        records.append({"img_id": i + 1, "img_filename": rel, "y": y, "split": split,
                        "place": place, "place_filename": f"/synthetic/{place}.jpg"})
    pd.DataFrame.from_records(records).to_csv(data_dir / "metadata.csv", index=False)
    return _complete(data_dir, "waterbirds")


def make_synthetic_celeba(
    root_dir: str | os.PathLike,
    *,
    group_counts: Mapping[str, tuple[int, int, int, int]] | None = None,
    image_size: int = 16,
    seed: int = 0,
) -> Path:
    """Synthetic ``celebA_v1.0``: hair band colour = Blond_Hair, face tone = Male.

    Images are ``image_size`` wide and 1.2x as tall (CelebA's aspect ratio).
    See :func:`make_synthetic_layout` for the parameters.
    """
    import pandas as pd

    Image = import_optional("PIL.Image", extra="wilds", package="pillow",
                            caller="make_synthetic_layout")

    rng, rows, data_dir = _layout(root_dir, "celebA", seed, group_counts, image_size)
    img_dir = data_dir / "img_align_celeba"
    img_dir.mkdir(exist_ok=True)
    height = round(image_size * 1.2)
    attrs, partitions = [], []
    for i, (split, blond, male) in enumerate(rows):
        image_id = f"{i + 1:06d}.jpg"
        face = (200, 160, 140) if male == 0 else (150, 110, 90)
        pixels = np.full((height, image_size, 3), face, dtype=np.float64)
        pixels[: height // 3] = (240, 220, 120) if blond == 1 else (60, 40, 30)
        pixels += rng.normal(0, 10, pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(img_dir / image_id)
        row = {"image_id": image_id}
        for name in _CELEBA_ATTRS:
            value = {"Blond_Hair": blond, "Male": male}.get(name, int(rng.integers(0, 2)))
            row[name] = 1 if value == 1 else -1
        attrs.append(row)
        partitions.append({"image_id": image_id, "partition": split})
    pd.DataFrame.from_records(attrs).to_csv(data_dir / "list_attr_celeba.csv", index=False)
    pd.DataFrame.from_records(partitions).to_csv(data_dir / "list_eval_partition.csv", index=False)
    return _complete(data_dir, "celebA")


def make_synthetic_civilcomments(
    root_dir: str | os.PathLike,
    *,
    group_counts: Mapping[str, tuple[int, int, int, int]] | None = None,
    seed: int = 0,
) -> Path:
    """Synthetic ``civilcomments_v1.0``: toxic words = label, mentions of identities.

    The four groups are (toxic, mentions ``black``); in training, toxic comments
    mostly mention the identity. Each comment also mentions one of the other seven
    identities in turn, and any identity at random (15 %).
    See :func:`make_synthetic_layout` for the parameters.
    """
    import pandas as pd

    rng, rows, data_dir = _layout(root_dir, "civilcomments", seed, group_counts)
    neutral = ["the", "article", "was", "about", "city", "council", "budget", "today", "read"]
    friendly = ["thanks", "great", "helpful", "agree", "kind", "thoughtful"]
    toxic = ["idiot", "stupid", "moron", "pathetic", "disgusting", "trash"]
    split_names = {v: k for k, v in _SPLIT_IDS.items()}
    others = [name for name in _CIVIL_IDENTITIES if name != "black"]
    seen: Counter[tuple[int, int]] = Counter()
    records = []
    for i, (split, y, black) in enumerate(rows):
        words = list(rng.choice(neutral, size=5))
        words += list(rng.choice(toxic if y == 1 else friendly, size=2))
        identity = {name: float(rng.random() < 0.15) for name in _CIVIL_IDENTITIES}
        # cycle through the other identities within each (split, label) cell, so that
        # every identity x label group of WILDS' evaluation is non-empty when cells have
        # at least 7 samples
        identity[others[seen[split, y] % len(others)]] = 1.0
        seen[split, y] += 1
        identity["black"] = float(black)
        words += [name.lower() + "_people" for name, v in identity.items() if v >= 0.5]
        rng.shuffle(words)
        row = {
            "id": 1000 + i,
            "comment_text": " ".join(words),
            "split": split_names[split],
            "toxicity": float(rng.uniform(0.55, 1.0) if y == 1 else rng.uniform(0.0, 0.45)),
        }
        row.update(identity)
        row.update({name: float(rng.random() < 0.1) for name in _CIVIL_AUXILIARY})
        row["identity_any"] = float(any(v >= 0.5 for v in identity.values()))
        records.append(row)
    frame = pd.DataFrame.from_records(records)
    frame.to_csv(data_dir / "all_data_with_identities.csv", index=True)
    return _complete(data_dir, "civilcomments")
