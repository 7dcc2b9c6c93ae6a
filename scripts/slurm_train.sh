#!/bin/bash
# Train TailCLIP on several nodes of a SLURM cluster: one torchrun launcher per node, one
# training process per GPU, rendezvous on the job's first node.
#
#   sbatch scripts/slurm_train.sh configs/coco_mlt_vitb16.py [train.py options, e.g. --set epochs=10]
#   sbatch scripts/slurm_train.sh configs/coco_mlt_vitb16.py --resume    # continue after a stop
#
# Adapt the #SBATCH lines (nodes, GPUs, time, partition/account) to your cluster. batch_size
# in the config is the global batch: it must be a multiple of nodes x GPUs per node. Five
# minutes before the time limit SLURM sends SIGTERM: the processes finish their step, rank 0
# saves newest_train_checkpoint.pt, and the job can be resubmitted with --resume.
#SBATCH --job-name=tailclip
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=%x-%j.out
set -euo pipefail

config=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [train.py options]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
source scripts/choose_python.sh  # or PYTHON=python inside an activated conda environment
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
gpus_per_node=${SLURM_GPUS_ON_NODE:-$(nvidia-smi --list-gpus | wc -l)}

srun --kill-on-bad-exit=1 "$python" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$gpus_per_node" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:29500" \
    train.py --config="$config" "$@"
