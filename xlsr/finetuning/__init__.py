"""Supervised fine-tuning on top of a pretrained encoder: CTC (`ctc.py`) and utterance classification
(`classify.py`), sharing the trainer with pretraining and the pieces in `common.py`."""
