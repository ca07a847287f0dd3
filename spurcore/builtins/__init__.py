"""Built-in plugins: ERM, the standard metrics and selectors, the basic backbones, the embedded
dataset and the progress display. They register through the same hooks as outside plugins."""
