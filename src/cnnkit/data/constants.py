"""Constants the data and the models share, defined once."""

# the per-channel mean and standard deviation of ImageNet's RGB pixels in [0, 1], with which the
# reference implementations' published weights were trained (torchvision, timm)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
