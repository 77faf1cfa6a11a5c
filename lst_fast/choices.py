"""Names and defaults that ``lst-fast``'s argument parser shows, kept here free of torch so that ``lst-fast
--help`` and errors in the arguments come before any heavy import. The modules that use them import them from
here (and re-export them): :mod:`lst_fast.data`, :mod:`lst_fast.model_runner`, :mod:`lst_fast.examples`,
:mod:`lst_fast.sweep.tables`, :mod:`lst_fast.sweep.report`.
"""

# lst_fast.data: colour photos that ship inside the scikit-image wheel (no download). The first four are the ones
# the spec's section 7 describes.
EMBEDDED_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry")
PRECISION_NAMES = ("fp32", "bf16", "fp16")  # lst_fast.model_runner.PRECISIONS: the model's precision during LST
PAPER_CLASSES = (99, 199, 299, 400, 499)  # the paper's Figure 1 (ImageNet: goose, Scotch terrier, meerkat, ...)
EXAMPLES_BATCH_SIZE = 196  # lst_fast.examples: pairs per LST batch, the paper's batch
TABLE_FORMATS = ("markdown", "latex", "csv")  # lst_fast.sweep.tables
TABLE_WHICH = ("1", "2", "cost", "all")
THUMB_SIZE = 96  # lst_fast.sweep.report: pixels, the longest side of a gallery thumbnail
PAGE_SIZE = 48  # gallery elements per page
