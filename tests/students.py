"""The README's extension example as a user's module (written into a temporary folder by
the tests that select it by ``_target_``): the clipped student defined in field space, and
the same student written in weight space only."""

import textwrap

USER_MODULE = textwrap.dedent(
    '''
    from phasesgd import CommitteeStudent


    class ClippedStudent(CommitteeStudent):
        """Online SGD with the error clipped to [-clip, clip] (a robust loss)."""

        def __init__(self, *args, clip: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.clip = clip

        def field_step(self, fields, labels, lr):
            errors = (labels - self.readout(fields)).clamp(-self.clip, self.clip)
            return self.committee_step(fields, errors, lr)


    class WeightSpaceClippedStudent(CommitteeStudent):
        """The same student written in weight space only (runs on the SGD engine alone)."""

        def __init__(self, *args, clip: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.clip = clip

        def sgd_step(self, x, y, lr):
            lam = self.fields(x)
            err = (y - self.readout(lam)).clamp(-self.clip, self.clip)
            self.first_layer_step(x, lam, err, lr)
            return err
    '''
)
