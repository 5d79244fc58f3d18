"""Train, evaluate, compare and demo CNN image classifiers on CIFAR-10.

Everything that computes lives in this package; the Streamlit pages only
render what it returns. Start with `python -m cifar --help`.
"""

# Canonical CIFAR-10 label order: label i is CLASS_NAMES[i].
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)
