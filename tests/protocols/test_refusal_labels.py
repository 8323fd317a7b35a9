"""Refusal text -> label, for the phrasings the models actually use, in English and Chinese."""

from __future__ import annotations

import pytest

from bananaline.protocols.content import REFUSAL_LABELS, classify_refusal_text

CASES = [
    ("watermark", "I can't help remove the watermark from this image."),
    ("watermark", "Removing watermarks from copyrighted photos isn't something I can do."),
    ("watermark", "Sorry, I can't do logo removal on a brand's photo."),
    ("watermark", "抱歉，我无法去除图片中的水印。"),
    ("watermark", "我不能帮你去掉logo。"),
    ("face_swap", "I can't perform a face swap involving real people."),
    ("face_swap", "I'm unable to replace the face in this photo with someone else's."),
    ("face_swap", "I can't edit a real person’s face onto another body."),
    ("face_swap", "抱歉，我不能进行换脸操作。"),
    ("face_swap", "无法替换人脸，这涉及真人肖像。"),
    ("nsfw", "I can't create sexually explicit content."),
    ("nsfw", "This request asks for nudity, which I can't generate."),
    ("nsfw", "NSFW images are not supported."),
    ("nsfw", "抱歉，我无法生成色情内容。"),
    ("nsfw", "该请求包含裸露或性感暴露的内容，无法生成。"),
    ("knowledge_cutoff", "I don't have information about that product; it may be after my knowledge cutoff."),
    ("knowledge_cutoff", "I do not have information about the 2027 model, which is beyond my training data."),
    ("knowledge_cutoff", "I don’t have information about this event."),
    ("knowledge_cutoff", "抱歉，这超出了我的知识截止日期。"),
    ("knowledge_cutoff", "我无法获取关于该产品的最新信息。"),
    ("knowledge_cutoff", "我的训练数据中没有这个人物。"),
    ("general", "I'm not able to help with that request."),
    ("general", "Here is a description of the scene you asked for: a cat on a mat."),
    ("general", "抱歉，我无法完成这个请求。"),
    ("general", ""),
]


@pytest.mark.parametrize(("label", "text"), CASES)
def test_refusal_label(label, text):
    assert classify_refusal_text(text) == label


def test_every_label_is_covered_in_both_languages():
    labels = {label for label, _ in CASES}
    assert labels == set(REFUSAL_LABELS)
    for label in REFUSAL_LABELS:
        texts = [text for case_label, text in CASES if case_label == label]
        assert any(text.isascii() for text in texts) and any(not text.isascii() for text in texts), label
