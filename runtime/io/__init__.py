"""Reading scans and writing outputs; the only place where axis order is converted."""
from runtime.io.axes import from_model_axes, to_model_axes
from runtime.io.scan import Scan, read_image, read_label, read_mask, read_scan
from runtime.io.write import OutputSet, check_writable

__all__ = [
    "OutputSet", "Scan", "check_writable", "from_model_axes", "read_image", "read_label", "read_mask",
    "read_scan", "to_model_axes",
]
