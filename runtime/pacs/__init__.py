"""The PACS node: a DICOM listener that receives series, segments them and sends the SEG back."""
