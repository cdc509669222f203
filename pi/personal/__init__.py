"""The body half's model and the decision: the wearer's own physiology model, fusion with the face, and the
carer's corrections.
"""
