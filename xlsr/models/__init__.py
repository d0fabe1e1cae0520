from .wav2vec2 import EncoderOutput, Wav2Vec2Model

__all__ = ["EncoderOutput", "Wav2Vec2Model"]
