"""Faces in photos and videos: find them, mark five landmarks, and align each onto a template the
way the training data was aligned, so a model trained on aligned crops can read raw photos.

- `scn.faces.detect`: dlib's HOG face detector and 5-point landmarks (`FaceDetector`, `Face`),
  imported lazily: the rest of the project works without the `faces` extra.
- `scn.faces.align`: alignment templates (`TEMPLATES`), the least-squares similarity transform and
  the warp (`align_face`); numpy and Pillow only.
- `scn.faces.media`: reading photos and video frames, drawing annotations, writing annotated video.
- `scn.faces.pipeline`: detect + align + classify over photos, folders and videos
  (`python -m scn.predict CKPT INPUT --detect`).
- speed: `scn.facebench` (`python -m scn.bench --faces DIR`).
"""
