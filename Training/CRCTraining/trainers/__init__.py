"""nnU-Net v2 trainer classes, found by name through nnUNet_extTrainer (see nnunet_env.py).

nnU-Net imports these files as top-level modules: absolute imports only.
"""
