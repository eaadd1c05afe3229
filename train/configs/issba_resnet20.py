"""ISSBA on CIFAR-10, ResNet-20: sample-specific residuals from a reduced StegaStamp
encoder trained here (16-bit secret), 10% poisoned, target 0 (Li et al., ICCV 2021).

The encoder trains to PSNR ~38 dB with every bit decoded; a model poisoned with that
residual had 6% ASR after 6 of 16 epochs. ``strength`` 4 amplifies the residual
(20*log10(4) = 12 dB lower PSNR, about 26 dB; ``metrics.json`` records the measured
``poisoning.poisoned_psnr_db``) without retraining the encoder."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.attack = 'issba'
  config.attack_kwargs.secret_len = 16
  config.attack_kwargs.steps = 3000
  config.attack_kwargs.encoder_images = 10000
  config.attack_kwargs.strength = 4.0
  config.poison_rate = 0.1
  config.target_label = 0
  if arg == 'quick':
    config = default.quick(config)
    config.attack_kwargs.steps = 5
    config.attack_kwargs.encoder_images = 64
  return config
