"""Object detection: SSDLite on MobileNetV3 (default boxes, box coding, loss, NMS, COCO mAP)."""
