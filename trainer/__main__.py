"""`python -m trainer …`, as torchrun starts it: `torchrun --nproc_per_node 4 -m trainer fit config.yaml --fold 1.1`."""
from trainer.cli import main

main()
