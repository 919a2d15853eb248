"""The options that ``finetune`` and ``tune`` share: one ``Annotated`` type per flag, in the
help panels of ``hessaudit finetune --help``.

Both commands declare them in their signatures with their defaults, ``epochs: Epochs = 30``;
those defaults equal :class:`hessaudit.robust.config.FinetuneConfig`'s (tests check both
commands). Options of one command only (``finetune --resume``, ``tune --trials``) are declared
in that command; those that ``measure`` shares too come from :mod:`hessaudit.commands.options`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hessaudit.commands import options

DATA = "Model, data and run folder"
OPTIMIZATION = "Optimization"
LOSS = "Loss and noise matrix"
CONSTRAINT = "Constraint and penalty"
NOISE = "Synthetic noise"
RUN = "Audit, resume and overwrite"

# --------------------------------------------------------------------------- model and data

Model = Annotated[
    str | None,
    typer.Option(
        help=f"{options.MODEL_SPEC}, or a Hugging Face model folder (config.json) (required to "
        "start a run).", rich_help_panel=DATA
    ),
]
Pretrained = Annotated[
    str | None,
    typer.Option(
        help="Pretrained checkpoint, .safetensors/.pt, or a Hugging Face model folder "
        "(required to start a run).",
        rich_help_panel=DATA,
    ),
]
Data = Annotated[
    str | None,
    typer.Option(
        help="Training data: ImageFolder dir, .npz (x, y[, clean_y]), 'digits', or a text "
        "table .csv/.tsv/.jsonl/.parquet (required to start a run).",
        rich_help_panel=DATA,
    ),
]
Out = Annotated[
    str | None,
    typer.Option(
        help="Run folder for every output, new or empty (required to start a run).",
        rich_help_panel=DATA,
    ),
]
NumClasses = Annotated[
    int | None,
    typer.Option(help="Classes k of the new task (default: from the data).", rich_help_panel=DATA),
]
EvalData = Annotated[
    str | None,
    typer.Option(
        help="Held-out data, evaluated every epoch, clean labels (default: none).",
        rich_help_panel=DATA,
    ),
]
BatchSize = options.BatchSize(DATA)
Samples = options.Samples("Train on", DATA)
InputSize = options.InputSize(DATA)
Mean = options.Mean(DATA)
Std = options.Std(DATA)
Interpolation = options.Interpolation(DATA)
CropPct = options.CropPct(DATA)
Device = options.Device(DATA)
Seed = Annotated[
    int,
    typer.Option(
        help="Seed for shuffling, the new head's init and the validation split.",
        rich_help_panel=DATA,
    ),
]
AllowHub = options.AllowHub(DATA)

# --------------------------------------------------------------------------- optimization

Epochs = Annotated[int, typer.Option(help="Training epochs.", rich_help_panel=OPTIMIZATION)]
# --lr, --optimizer, --weight-decay, --schedule: None is the data's recipe
# (hessaudit.robust.text_recipe: the paper's for images, Hugging Face's for text)
Lr = Annotated[
    float | None,
    typer.Option(help="Learning rate (default: 1e-4; 2e-5 for text data).",
                 rich_help_panel=OPTIMIZATION),
]
Optimizer = Annotated[
    str | None,
    typer.Option(help="adam | adamw (no weight decay on biases and normalization weights) | "
                 "sgd (default: adam; adamw for text data).", rich_help_panel=OPTIMIZATION),
]
Momentum = Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=OPTIMIZATION)]
WeightDecay = Annotated[
    float | None,
    typer.Option(help="Weight decay of the optimizer (default: 0; 0.01 for text data).",
                 rich_help_panel=OPTIMIZATION),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        help="step (x --lr-decay every --lr-step epochs) | cosine | linear (warm-up, then down "
        "to 0 at the end, stepped per batch) | none (default: step; linear for text data).",
        rich_help_panel=OPTIMIZATION,
    ),
]
WarmupEpochs = Annotated[
    float | None,
    typer.Option(
        metavar="K",
        help="--schedule linear: warm up over the first K epochs' steps (default: the first "
        "10% of all steps).",
        rich_help_panel=OPTIMIZATION,
    ),
]
LrStep = Annotated[
    int, typer.Option(help="Epochs between step decays.", rich_help_panel=OPTIMIZATION)
]
LrDecay = Annotated[
    float, typer.Option(help="Factor of each step decay.", rich_help_panel=OPTIMIZATION)
]

# --------------------------------------------------------------------------- loss, noise matrix

Loss = Annotated[
    str,
    typer.Option(
        help="reweight (backward correction with F^-1, the paper's) | ce | label-smoothing | "
        "forward | gce | sce | js.",
        rich_help_panel=LOSS,
    ),
]
Smoothing = Annotated[float, typer.Option(help="Label smoothing epsilon.", rich_help_panel=LOSS)]
GceQ = Annotated[float, typer.Option(help="GCE exponent q.", rich_help_panel=LOSS)]
SceAlpha = Annotated[
    float, typer.Option(help="SCE weight of the cross-entropy.", rich_help_panel=LOSS)
]
SceBeta = Annotated[
    float, typer.Option(help="SCE weight of the reverse cross-entropy.", rich_help_panel=LOSS)
]
JsWeight = Annotated[
    float,
    typer.Option(
        metavar="PI1",
        help="JS loss: weight of the label in the mixture, in (0, 1) (0.5, the JS authors' "
        "default; near 0 acts like CE, near 1 like MAE).",
        rich_help_panel=LOSS,
    ),
]
NonnegCorrection = Annotated[
    bool,
    typer.Option(
        help="reweight: clamp each class's corrected partial risk in the batch at zero, so the "
        "loss cannot run below zero (non-negative risk estimator).",
        rich_help_panel=LOSS,
    ),
]
NoiseMatrix = Annotated[
    str | None,
    typer.Option(
        help="F (rows = true, columns = noisy label): symmetric:RATE, a .csv/.npy/.json file, "
        "'estimate' (from first models; estimate:confident-joint | estimate:anchor | "
        "estimate:dual-t picks the method), or 'injected' (the --inject-noise matrix). Needed "
        "by reweight and forward (default: none).",
        rich_help_panel=LOSS,
    ),
]
EstimateMethod = Annotated[
    str,
    typer.Option(
        help="How --noise-matrix estimate works: confident (alias confident-joint) | anchor | "
        "dual-t.",
        rich_help_panel=LOSS,
    ),
]
EstimateEpochs = Annotated[
    int | None,
    typer.Option(
        help="Epochs of the first models for 'estimate' (default: --epochs).",
        rich_help_panel=LOSS,
    ),
]

# --------------------------------------------------------------------------- constraint

Constraint = Annotated[
    str | None,
    typer.Option(
        help="frobenius | none (default: frobenius for reweight, none otherwise).",
        rich_help_panel=CONSTRAINT,
    ),
]
Radius = Annotated[
    float,
    typer.Option(
        help="Radius D of the first stage's balls, in Frobenius norm of the weight change.",
        rich_help_panel=CONSTRAINT,
    ),
]
RadiusGrowth = Annotated[
    float,
    typer.Option(
        help="Radius factor gamma per stage: ResNet layer1..4, else 4 equal groups of layers "
        "in model order.",
        rich_help_panel=CONSTRAINT,
    ),
]
HeadRadius = Annotated[
    float | None,
    typer.Option(
        help="Keep the new head in a ball of this radius (Frobenius norm) around zero "
        "(default: unconstrained).",
        rich_help_panel=CONSTRAINT,
    ),
]
RadiusAttention = Annotated[
    float | None,
    typer.Option(
        help="Radius of the attention layers (query, key, value, attention output), around "
        "their pretrained values (default: --radius).",
        rich_help_panel=CONSTRAINT,
    ),
]
RadiusLinear = Annotated[
    float | None,
    typer.Option(
        help="Radius of the other linear layers (feed-forward, pooler) (default: --radius).",
        rich_help_panel=CONSTRAINT,
    ),
]
RadiusTable = Annotated[
    str | None,
    typer.Option(
        help="Per-layer radii by name pattern, .json or .csv; a pattern wins over every other "
        "radius option (default: none).",
        rich_help_panel=CONSTRAINT,
    ),
]
Penalty = Annotated[
    str | None,
    typer.Option(
        help="l2sp:LAMBDA[:HEAD] (L2-SP; HEAD default 0.01; default: none).",
        rich_help_panel=CONSTRAINT,
    ),
]

# --------------------------------------------------------------------------- noise, audit

InjectNoise = Annotated[
    str | None,
    typer.Option(
        help="Flip training labels: symmetric:RATE | asymmetric:RATE[:MAP.json] | "
        "matrix:FILE, RATE a fraction 0..1 (default: none, the labels as given).",
        rich_help_panel=NOISE,
    ),
]
NoiseSeed = Annotated[
    int | None,
    typer.Option(help="Seed of --inject-noise (default: --seed).", rich_help_panel=NOISE),
]
Audit = Annotated[
    bool,
    typer.Option(
        help="Audit the final checkpoint (Hessian measure) into DIR/audit.json.",
        rich_help_panel=RUN,
    ),
]
AuditSamples = options.Samples("Audit", RUN)

# --------------------------------------------------------------------------- text data

TextColumn = options.TextColumn(DATA)
LabelColumn = options.LabelColumn(DATA)
TokenizerDir = options.TokenizerDir(DATA)
MaxLength = options.MaxLength(DATA)
