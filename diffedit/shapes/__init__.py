"""A synthetic world of coloured shapes: scenes, captions, exact masks, edit tasks, a classifier.

``scenes`` generates the data, ``classify`` reads an image back into (colour, shape), ``vocab``
holds the words and the tokenizer, ``train`` trains the embedded default model (models/shapes-v3).
"""
