"""The shop's FAQ coming in: files of any format read and checked, the 9:1 split, documents
turned into FAQ rows, paraphrases of the training questions."""
