"""Base config: a clean ResNet-20 on CIFAR-10. Variants override a few fields."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = 'cifar10'
  config.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.download = config_dict.placeholder(bool)  # None: download if absent unless $SCALEUP_JAX_NO_DOWNLOAD.
  config.max_train_examples = 0  # 0 = all; the quick switch sets a small number.
  config.max_test_examples = 0

  config.model = 'resnet20'
  config.num_epochs = 16  # CPU budget of the zoo models; GPU users: 100-200.
  config.batch_size = 128
  config.learning_rate = 0.1
  config.warmup_epochs = 2.0
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.augment = True  # random crop + flip; the paper trains without (Sec. 5.1).

  # Poisoning. attack='none' trains a clean model.
  config.attack = 'none'
  config.attack_kwargs = ml_collections.ConfigDict()
  config.poison_rate = 0.0
  config.target_label = 0
  config.source_classes = ()  # () = all classes may be poisoned.
  # Partial backdoor only: this share of the training set, from the other classes, carries the
  # trigger with its true label, so the trigger works on the source classes only (App. K).
  config.cover_rate = 0.0

  config.eval_subset = 2000  # test images scored after every epoch (all at the end).
  config.log_every = 20
  config.progress = True
  return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a seconds-long run for tests."""
  config.model = 'tiny'
  config.num_epochs = 1
  config.batch_size = 32
  config.max_train_examples = 256
  config.max_test_examples = 128
  config.eval_subset = 64
  config.warmup_epochs = 0.0
  config.progress = False
  return config
