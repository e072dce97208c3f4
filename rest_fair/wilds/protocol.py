"""The training recipes of the WILDS reference code, as used by ``--protocol wilds``.

Each :class:`Recipe` copies one dataset's defaults from the WILDS repository
(``examples/configs/datasets.py``, ``model.py`` and ``scheduler.py`` of
github.com/p-lambda/wilds, release 2.0), the validation metric that picks the checkpoint
included, and the number of seeds that WILDS' ``examples/evaluate.py`` reads
(``seed:0``-``seed:4`` for CivilComments, ``seed:0``-``seed:2`` otherwise).

What REST adds on top (sparsity, magnitude masks from the pretrained weights, group
reweighting) and where our engine differs from the WILDS trainer are listed in
:attr:`Recipe.deviations`, and both end up in the protocol column of the comparison
table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["WILDS_RECIPES", "Recipe", "recipe_for"]

_SOURCE = (
    "WILDS 2.0 reference code (github.com/p-lambda/wilds): examples/configs/datasets.py, "
    "model.py, scheduler.py; seeds as read by examples/evaluate.py"
)
_UNKNOWN = "No WILDS recipe for {!r}; recipes exist for {}."


@dataclass(frozen=True)
class Recipe:
    """One dataset's training recipe from the WILDS reference code.

    Attributes
    ----------
    dataset : str
        WILDS dataset name.
    module : str
        ``RESTClassifier(module=...)``: a torchvision model or ``"hf:<Hub name>"``.
    weights : str or None
        torchvision weights name (images); WILDS' ``pretrained=True`` loads torchvision's
        original ImageNet weights, ``IMAGENET1K_V1``.
    image_size : int or None
        Side of the (square) input images; :func:`rest_fair.wilds.default_image_transform`
        reproduces WILDS' evaluation transforms (no augmentation in these recipes).
    transform : str
        WILDS' name of the transform and what it does.
    optimizer : str
        ``"sgd"`` or ``"adamw"``.
    lr, weight_decay : float
    momentum : float
        SGD momentum (ignored by AdamW).
    batch_size, max_epochs : int
    max_length : int or None
        Tokens per text (text datasets).
    n_seeds : int
        Replicates the leaderboard expects (seeds ``0 .. n_seeds - 1``).
    selection : str
        WILDS' ``val_metric``: the checkpoint kept is the best epoch on it.
    dense_layers : tuple of str
        Layers REST keeps dense in this recipe (first convolution and classifier for
        images, classifier for text).
    deviations : tuple of str
        Where rest_fair's training differs from the WILDS trainer.
    source : str
        Where the numbers come from.
    """

    dataset: str
    module: str
    weights: str | None
    image_size: int | None
    transform: str
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    batch_size: int
    max_epochs: int
    max_length: int | None
    n_seeds: int
    selection: str
    dense_layers: tuple[str, ...]
    deviations: tuple[str, ...] = field(default=())
    source: str = _SOURCE

    @property
    def seeds(self) -> list[int]:
        """``[0, ..., n_seeds - 1]``."""
        return list(range(self.n_seeds))


_WATERBIRDS = Recipe(
    dataset="waterbirds",
    module="resnet50",
    weights="IMAGENET1K_V1",
    image_size=224,
    transform="image_resize_and_center_crop: resize to 256x256, center crop 224",
    optimizer="sgd",
    lr=1e-5,
    weight_decay=1.0,
    momentum=0.9,
    batch_size=128,
    max_epochs=300,
    max_length=None,
    n_seeds=3,
    selection="acc_wg (val worst-group accuracy, groups background x y)",
    dense_layers=("first", "head"),
    deviations=("learning rate constant, as WILDS (scheduler None)",),
)

#: The published WILDS training recipe of each supported dataset.
WILDS_RECIPES: dict[str, Recipe] = {
    "waterbirds": _WATERBIRDS,
    # the same ResNet-50 recipe as Waterbirds' but for the transform and the optimisation
    "celebA": replace(
        _WATERBIRDS,
        dataset="celebA",
        transform="image_base: center crop to 178x178, resize to 224x224",
        lr=1e-3,
        weight_decay=0.0,
        batch_size=64,
        max_epochs=200,
        selection="acc_wg (val worst-group accuracy, groups male x y)",
    ),
    "civilcomments": Recipe(
        dataset="civilcomments",
        module="hf:distilbert-base-uncased",
        weights=None,
        image_size=None,
        transform="bert: DistilBERT tokenizer, truncation to 300 tokens",
        optimizer="adamw",
        lr=1e-5,
        weight_decay=0.01,
        momentum=0.9,
        batch_size=16,
        max_epochs=5,
        max_length=300,
        n_seeds=5,
        selection="acc_wg (val worst-group accuracy)",
        dense_layers=("head",),
        deviations=(
            "learning rate constant (WILDS: linear decay to 0, no warm-up)",
            "no gradient clipping (WILDS: max_grad_norm 1.0)",
            "batches padded to their longest text (WILDS pads to 300; same logits under "
            "the attention mask)",
            "checkpoint selected on worst-group accuracy over label x black, the training "
            "groups (WILDS: over the 16 identity x label groups of acc_wg)",
        ),
    ),
}
_ALIASES = {key.lower(): key for key in WILDS_RECIPES}


def recipe_for(dataset: str) -> Recipe:
    """The :class:`Recipe` of ``dataset`` (case-insensitive).

    Parameters
    ----------
    dataset : str
        ``"waterbirds"``, ``"celebA"`` or ``"civilcomments"``.

    Returns
    -------
    Recipe
    """
    key = str(dataset).lower()
    if key not in _ALIASES:
        raise ValueError(_UNKNOWN.format(dataset, sorted(WILDS_RECIPES)))
    return WILDS_RECIPES[_ALIASES[key]]
