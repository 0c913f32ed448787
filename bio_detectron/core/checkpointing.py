"""
How a converted layer's feedback tensor goes into a state dict and comes back out of one.

The tensor is saved as ``<layer>.feedback`` with the tag of the rule that made it in the state
dict's per-module metadata. Loading restores it exactly when the tags match; otherwise the layer
makes it again from the weights just loaded (see
:class:`~bio_detectron.core.layers.FeedbackLayer`).
"""

import logging

__all__ = ["METADATA_KEY", "FeedbackCheckpointMixin"]

logger = logging.getLogger(__name__)

# Key of a converted layer's entry in a state dict's per-module metadata: the tag of the rule
# that made the layer's ``feedback`` tensor (LearningRule.tag()).
METADATA_KEY = "bio_rule"


class FeedbackCheckpointMixin:
    """
    The state-dict hooks of :class:`~bio_detectron.core.layers.FeedbackLayer`, which supplies
    ``learning_rule``, ``_feedback()`` and ``make_feedback_now()``.
    """

    def _loads_weight(self, state_dict, prefix: str) -> bool:
        """Whether this load sets the weight the feedback tensor describes."""
        return prefix + "weight" in state_dict

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Module.state_dict keeps per-module metadata (the module's version) in
        # destination._metadata, pickled with the state dict; the rule's tag rides along there.
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None and self._feedback() is not None:
            metadata.setdefault(prefix[:-1], {})[METADATA_KEY] = self.learning_rule.tag()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self._feedback() is None:
            return
        key, tag = prefix + "feedback", self.learning_rule.tag()
        if key not in state_dict:
            # A checkpoint of the unconverted model (model zoo, torchvision) or of a rule without
            # a feedback tensor: not missing; it is made from the weight loaded, if any.
            if key in missing_keys:
                missing_keys.remove(key)
            if self._loads_weight(state_dict, prefix):
                self.make_feedback_now()
            return
        saved = (local_metadata or {}).get(METADATA_KEY)
        if saved == tag:
            self._feedback_restored = True
        elif saved is None:
            self._feedback_restored = True
            logger.warning(
                f"{key}: the checkpoint does not record which rule made this feedback tensor; it "
                f"is taken as the feedback tensor of {tag}"
            )
        else:
            self.make_feedback_now()
            logger.warning(
                f"{key}: the checkpoint's feedback was made by {saved}, but this layer learns with "
                f"{tag}; it is not used: the layer's feedback is made again from its weights"
            )
