"""Built-in plugins: ERM, the standard metrics and selectors, the basic backbones, the embedded
dataset and the progress display. They register through the same hooks as outside plugins,
and like them import torch only when what they register is used (`networks.py` holds the
backbones' networks), so that listing plugins stays fast."""
