"""TailCLIP on VOC-MLT, ViT-B/16 backbone: the published settings of the paper.

Train: python train.py --config=configs/voc_mlt_vitb16.py
Test:  python test.py --config=configs/voc_mlt_vitb16.py --checkpoint=best_valid_mAP.pt
"""


class CFG:
    # Benchmark: "voc_mlt", "coco_mlt", "synthetic_mlt" (the demo data) or "custom"
    dataset = "voc_mlt"
    # Folder holding one folder per dataset (relative to the repository root, or absolute)
    data_root = "datasets"

    # CLIP backbone, any of clip.available_models(): "RN50", "ViT-B/16", ...
    model_name = "ViT-B/16"
    # Start from OpenAI's pretrained weights (False: random initialisation)
    pretrained = True

    # Prompt prefix: class prompts are class_caption + class name ("a photo of a dog");
    # the training captions are class_caption + the image's class names ("a photo of a dog, cat")
    class_caption = "a photo of a "
    # Use the dataset's natural-language captions for the contrastive loss instead
    use_dataset_train_captions = False
    # Square image size fed to the image encoder (aspect ratio not kept, as in the paper)
    size = 224
    # Context length of the text encoder; CLIP uses 77
    max_length = 77
    # Image normalisation statistics: "imagenet" (the paper) or "clip"
    normalize = "imagenet"

    # Global training batch size
    batch_size = 8
    # Batch size for evaluation (no effect on the results)
    eval_batch_size = 64
    # DataLoader worker processes
    num_workers = 4
    # Training epochs; the learning rate follows a cosine from lr to 0 over them
    epochs = 50

    # Optimiser: "AdamW" (betas 0.9/0.98, eps 1e-9), "Adam" or "SGD"
    optimizer = "AdamW"
    # Base learning rate
    lr = 1e-6
    # Momentum, used by SGD only
    momentum = 0.9
    # Weight decay, applied to all parameters
    weight_decay = 0.01

    # Loss terms, summed: "clip" (contrastive, images vs captions), "bal" (Balanced
    # Asymmetric Loss on the class logits) or "asl" (plain Asymmetric Loss)
    loss_function = ["clip", "bal"]
    # lambda: weight of the BAL/ASL term against the contrastive term
    asl_mul = 0.4
    # Asymmetric focusing: exponent on negatives and on positives
    asl_gamma_neg = 9.8
    asl_gamma_pos = 0.0
    # Probability margin m shifting the negatives
    asl_clip = 0.05
    # Lower bound inside the logarithms
    asl_eps = 1e-8
    # Label smoothing on the positive targets of BAL
    label_smoothing = 0.1

    # Balanced sampling with replacement; the power is s in the paper
    use_sample_weights = True
    sample_weights_power = 1.35
    # Class weights in BAL; the power is kept equal to the sampling power
    use_weighted_loss = True
    class_weights_power = 1.35

    # Class prompts encoded in every training step ("per_step") or once per epoch ("per_epoch")
    label_embeddings = "per_step"
    # Evaluation scores: "softmax" over classes (the paper), "sigmoid" or "logits"
    score = "softmax"

    # Checkpoints written to runs/<run>/ after each epoch
    save_best_mAP_checkpoint = True
    save_best_tail_mAP_checkpoint = True
    save_newest_checkpoint = True

    # Seed for initialisation, sampling and augmentation
    seed = 0
    # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    device = "auto"
    # The paper's numerics: float32 throughout, training and evaluation (so checkpoint
    # selection too), with PyTorch's default TF32 flags (tf32 = False changes none of them).
    # Faster, but not the paper's recipe: --set precision=bf16 --set tf32=True (bf16 autocast,
    # TF32 matmuls and convolutions); its speed and mAP cost are not yet measured on a GPU.
    # precision: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16" or "fp32"
    precision = "fp32"
    tf32 = False
    # Decode and resize every image once, then train from the cached pixels
    image_cache = True

    # Options not set here (custom datasets, prompt learning, torch.compile, error
    # tolerance, run_dir) keep their defaults; docs/options.md lists them all.
