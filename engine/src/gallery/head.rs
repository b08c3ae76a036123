//! The gallery's scoring head: training and calibrating it on the gallery's
//! own labels, exporting the pairs, and persisting the `HEAD` file.

use super::{Failure, Gallery, HEAD, lock};
use crate::error::Result;
use crate::head::{self, HeadInfo, TrainOptions};
use crate::storage::format;
use std::sync::Arc;

impl Gallery {
    /// The gallery's head and calibration, if any.
    pub fn head(&self) -> Option<Arc<HeadInfo>> {
        self.head.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Train the scoring head on the gallery's own labels, calibrate it and
    /// the distance threshold at `opts.target_far`, and persist both
    /// (replacing any previous head atomically).
    pub fn train_head(&self, opts: &TrainOptions) -> Result<HeadInfo> {
        self.train_or_calibrate(opts, true)
    }

    /// Calibrate without training: the distance threshold and, if a head is
    /// trained, its threshold, both at `opts.target_far` on freshly drawn
    /// held-out pairs; a trained head's weights are kept.
    pub fn calibrate(&self, opts: &TrainOptions) -> Result<HeadInfo> {
        self.train_or_calibrate(opts, false)
    }

    /// The features `|a − b|` and labels (true: same subject) of exactly the
    /// training and held-out pairs that [`Gallery::train_head`] with the same
    /// options would draw, for evaluation against other implementations.
    /// Features are row-major, the gallery's dimension a pair.
    #[allow(clippy::type_complexity)]
    pub fn export_pairs(
        &self,
        opts: &TrainOptions,
    ) -> Result<((Vec<f32>, Vec<bool>), (Vec<f32>, Vec<bool>))> {
        let snap = self.snapshot();
        let pairs = head::sample_pairs(&snap, opts, true)?;
        Ok((
            head::features(&snap, &pairs.train),
            head::features(&snap, &pairs.heldout),
        ))
    }

    /// Install `head` (trained elsewhere, e.g. across a cluster's shards)
    /// as this gallery's, persisted as if trained here (replacing any
    /// previous head atomically). Refused when its weights are not of the
    /// gallery's dimension.
    pub fn install_head(&self, head: &HeadInfo) -> Result<()> {
        let dim = self.spec.dim;
        if head.trained && head.weights.len() != dim {
            return Err(crate::Error::InvalidSpec {
                reason: format!(
                    "a head of {} weights for a gallery of {dim} values a vector",
                    head.weights.len()
                ),
            });
        }
        let _h = lock(&self.head_lock);
        self.check_writable()?;
        self.persist_head(head)
    }

    fn persist_head(&self, info: &HeadInfo) -> Result<()> {
        let path = self.dir.join(HEAD);
        match crate::storage::fs::atomic_write(
            &*self.fs,
            &path,
            &format::encode_head(&info.to_data()),
        ) {
            Ok(()) => {}
            Err(e) if e.renamed => {
                return Err(self.set_poison(Failure::of("head directory sync failed", &e.error)));
            }
            Err(e) => return Err(e.error),
        }
        *self.head.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(info.clone()));
        Ok(())
    }

    pub(super) fn train_or_calibrate(&self, opts: &TrainOptions, fit: bool) -> Result<HeadInfo> {
        let _h = lock(&self.head_lock);
        self.check_writable()?;
        let snap = self.snapshot();
        let previous = self.head();
        let info = head::train(&snap, opts, fit, previous.as_deref())?;
        self.persist_head(&info)?;
        Ok(info)
    }
}
