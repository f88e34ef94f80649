"""Help texts shared by several subcommands, written out so that building the parser imports no
data code (tests/test_cli_help.py checks them against :data:`polyact.data.BUILTIN` and the
``NAME:FOLDER`` forms of :func:`polyact.data.load_dataset`)."""

DATASET_HELP = ("digits (8x8, scikit-learn) | digits32 (3x32x32, harder) | breast_cancer | FILE.npz (x_train, "
                "y_train, x_test, y_test) | mnist:DIR | fashion_mnist:DIR | cifar10:DIR (the original files in "
                "a folder) | images:DIR (one subfolder per class) (default: digits)")
