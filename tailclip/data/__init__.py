"""Long-tailed multi-label data: split files, class groups, balancing weights, sampling,
captions, transforms and the benchmark datasets (VOC-MLT, COCO-MLT, synthetic, custom)."""
from .balance import GROUPS, balance_weights, class_counts, class_groups
from .captions import fit_to_context, label_caption, label_prompts
from .datasets import (
                       DATASETS,
                       DataBundle,
                       MultiLabelDataset,
                       UnreadableImageError,
                       build_data,
                       check_images_exist,
                       collate_skip_none,
                       load_image,
)
from .sampler import BalancedSampler
from .splits import SplitEntry, SplitFormatError, read_captions, read_class_names, read_split
from .synthetic import ensure_synthetic
from .transforms import MEANS_STDS, build_transform
