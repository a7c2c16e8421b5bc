"""Dataset preprocessing scripts that write the project's on-disk format (see ``monai_probunet.data.disk_format``).

``python -m preprocessing.lidc --dicom-root DIR --out DIR`` turns LIDC-IDRI DICOM scans into the 2-D, 4-grader
lesion crops of the Probabilistic U-Net paper (Kohl et al. 2018, Appendix H.1).
"""
