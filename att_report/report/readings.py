"""What a viewed matrix means, in words, and which colour options make sense for it: attention, rollout, saliency.

The viewer is generic (DESIGN.md principle 6), so every kind of matrix brings its own reading: the help of the two
text views and the matrix, the first entries of "How to read this page", and the scale options it offers. A chunk
page formats the readings of its sections (templates/chunk.html); js/chunk.js shows the one of the section shown.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION, ROLLOUT, SALIENCY = "attention", "rollout", "saliency"
ROW_MAX, IGNORE_SINK, LOG = "row-max", "ignore-sink", "log"


@dataclass(frozen=True)
class Control:
    """A scale option: its data-option, its label, whether it starts on."""

    option: str
    label: str
    checked: bool


CONTROLS = (Control(ROW_MAX, "Row-max scaling", True), Control(IGNORE_SINK, "Ignore first token", False),
            Control(LOG, "Log colour", False))


@dataclass(frozen=True)
class Reading:
    """The words of one kind of matrix, ready to format, and the scale options it offers."""

    name: str
    helps: dict[str, str]  # "observer", "observed", "matrix" -> the panel's one-line help
    guide: tuple[tuple[str, str], ...]  # (term, what it means), before the entries every page shares
    controls: tuple[str, ...]  # the data-option values offered


# Per reading: the panels' help ({earlier} and {later} read "earlier " and "later " over causal tokens, else nothing),
# the guide's first entries, and the scale options offered.
_WORDS: dict[str, tuple[dict[str, str], tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    ATTENTION: (
        {"observer": "Hover a token: how much it attended to each {earlier}token (its row).",
         "observed": "Hover a token: how much each {later}token attended to it (its column).",
         "matrix": "Query tokens top to bottom, the tokens they attend to left to right."},
        (("“token a → token b: w”", "token a (the query) gives weight w to token b (the key); a row of weights sums "
                                   "to 1."),
         ("Colour", "Row-max scaling colours each weight relative to the largest one shown; without it, 1 is full "
                    "colour. Ignoring the first token (an attention sink takes much of most rows) leaves it uncoloured "
                    "and scales the rest as shares of the weight left after it. "
                    "Log colour spreads three decades over the ramp, so weights down to a thousandth of the top show, "
                    "and any smaller one that is not zero gets the palest shade. The numbers are never scaled.")),
        (ROW_MAX, IGNORE_SINK, LOG),
    ),
    ROLLOUT: (
        {"observer": "Hover a token: how much its representation after this layer draws on each {earlier}input token "
                     "(its row).",
         "observed": "Hover a token: how much each {later}token's representation after this layer draws on it (its "
                     "column).",
         "matrix": "Tokens after this layer top to bottom, the input tokens they draw on left to right."},
        (("“token a → token b: w”", "after this layer, a share w of token a's representation traces back to input "
                                   "token b, through every layer's attention so far, each mixed half and half with the "
                                   "residual stream; a row sums to 1. Not one head's weights: a product over layers."),
         ("Colour", "Row-max scaling colours each share relative to the largest one shown; without it, 1 is full "
                    "colour. Through the layers the rollout collects on the first token (the attention sink, carried "
                    "forward); ignoring it leaves it uncoloured and scales the rest as shares of what is left after "
                    "it. Log colour spreads three decades over the ramp, so shares down to a thousandth of the top "
                    "show, and any smaller one that is not zero gets the palest shade. The numbers are never scaled.")),
        (ROW_MAX, IGNORE_SINK, LOG),
    ),
    SALIENCY: (
        {"observer": "Hover a completion token: each {earlier}token's share of the gradient of its log-probability "
                     "(its row; prompt tokens have none).",
         "observed": "Hover a token: its share of the gradient of each {later}completion token's log-probability (its "
                     "column).",
         "matrix": "Completion tokens top to bottom, the input tokens their log-probability is sensitive to left to "
                   "right; prompt rows are empty."},
        (("“token a → token b: w”", "token b's input embedding carries the share w of the gradient of token a's "
                                   "log-probability (the size of the gradient on each earlier token, the row scaled "
                                   "to sum to 1). A first-order sensitivity, not attention."),
         ("Colour", "Row-max scaling colours each share relative to the largest one of the row; without it, 1 is full "
                    "colour. "
                    "Log colour spreads three decades over the ramp, so weights down to a thousandth of the top show, "
                    "and any smaller one that is not zero gets the palest shade. The numbers are never scaled.")),
        (ROW_MAX, LOG),
    ),
}


def reading(name: str, causal: bool) -> Reading:
    """The reading of matrices of kind `name` over a causal or bidirectional token sequence."""
    helps, guide, controls = _WORDS[name]
    order = {"earlier": "earlier " if causal else "", "later": "later " if causal else ""}
    return Reading(name, {panel: text.format(**order) for panel, text in helps.items()}, guide, controls)


@dataclass(frozen=True)
class OfferedControl:
    """A scale option a page shows, and the readings of the page that offer it (space-separated names)."""

    option: str
    label: str
    checked: bool
    readings: str


def page_readings(names: list[str], causal: bool) -> tuple[Reading, ...]:
    """The readings of a page's sections, each once, in the order given (the opening section's first)."""
    return tuple(reading(name, causal) for name in dict.fromkeys(names))


def page_controls(readings: tuple[Reading, ...]) -> tuple[OfferedControl, ...]:
    """The scale options some reading of the page offers; the page hides each while a section not offering it shows."""
    return tuple(
        OfferedControl(control.option, control.label, control.checked,
                       " ".join(r.name for r in readings if control.option in r.controls))
        for control in CONTROLS if any(control.option in r.controls for r in readings)
    )
