//! How burst updates of dense tables mark their pages dirty: page by page,
//! or every dense page at once in an epoch that writes most of them
//! ([`WholeMarks`]).

use super::layout::{ctrl_loc, kv_off};
use crate::store::StateStore;

/// Dirty epochs in a row whose burst updates may mark every dense page at
/// once (see [`WholeMarks`]); the epoch after them marks page by page, to
/// measure the writes again.
const WHOLE_EPOCHS_MAX: u32 = 4;

/// How burst updates of dense tables mark their pages dirty.
///
/// Marking a value's page per update cost keyed-sum about 30 of its 194
/// instructions a record. When most dense pages are written in a dirty
/// epoch anyway (the one between two checkpoints), the first burst of the
/// epoch marks every page of every dense part's control bytes, keys and
/// values instead, and the updates mark nothing; an insert still marks its
/// key's hash, and a growth or a move what it writes. Not
/// while a checkpoint's copy-on-write is on: marking a page copies it
/// first if the stream has not read it yet, and marking every page at once
/// would copy them all in one stall, where marking page by page spreads the
/// copies over the writes.
///
/// Whether an epoch may mark all is decided when the one before it ends
/// (at a checkpoint): yes if that epoch was marked page by page and
/// dirtied at least half as many pages as the dense parts hold (a few hot
/// keys do not make every page part of the next increment), or if it was
/// marked whole and fewer than [`WHOLE_EPOCHS_MAX`] were in a row (then one
/// epoch marks page by page, to measure again). A fresh or restored store's
/// first epoch may: its first checkpoint is a full image, which reads no
/// dirty bit.
#[derive(Clone, Debug)]
pub(crate) struct WholeMarks {
    /// The dirty epoch in which every dense part's pages were marked (0:
    /// none).
    pub(super) marked: u64,
    /// This epoch may mark them all.
    pub(super) allowed: bool,
    /// Epochs in a row marked whole, this one included.
    pub(super) in_a_row: u32,
}

impl Default for WholeMarks {
    fn default() -> Self {
        Self { marked: 0, allowed: true, in_a_row: 0 }
    }
}

impl StateStore {
    /// Whether every page of every dense part is marked dirty in this dirty
    /// epoch, marking them now if the epoch may (see [`WholeMarks`]).
    pub(super) fn dense_all_marked(&mut self) -> bool {
        let epoch = self.file.dirty_epoch();
        if self.marks.marked == epoch {
            return true;
        }
        if !self.marks.allowed || self.file.copying() {
            return false;
        }
        for (loc, len) in kv_regions(&self.tables) {
            self.file.mark_dirty(loc, len);
        }
        self.marks.marked = epoch;
        self.marks.in_a_row += 1;
        true
    }

    /// The dirty epoch ends (a checkpoint takes or clears the dirty pages):
    /// decides whether the next one may mark every dense page at once.
    pub(crate) fn plan_whole_marks(&mut self) {
        let allowed = if self.marks.marked == self.file.dirty_epoch() {
            self.marks.in_a_row < WHOLE_EPOCHS_MAX
        } else {
            self.marks.in_a_row = 0;
            // Pages of the dense parts' keys and values (about: a part's
            // may share their first and last page with others).
            let dense_pages: usize =
                kv_regions(&self.tables).map(|(_, len)| len.div_ceil(super::file::PAGE_BYTES)).sum();
            self.file.dirty_page_count() * 2 >= dense_pages.max(1)
        };
        self.marks.allowed = allowed;
        if !allowed {
            self.marks.in_a_row = 0;
        }
    }
}

/// Where the control bytes, keys and values of every part of the dense
/// tables of `tables` lie in the file (what burst updates write, and the
/// inserts of their runs but for the keys' hashes): (location, bytes).
/// The control bytes come first in a part, on the first page of its keys
/// but in the largest parts: marked with them, they take an insert's mark
/// of its control byte off (about 10 instructions an insert).
fn kv_regions(tables: &[super::Table]) -> impl Iterator<Item = (u64, usize)> + '_ {
    tables.iter().filter_map(|t| t.dense.as_ref()).flat_map(|d| {
        d.bins.iter().filter(|db| db.exists()).flat_map(move |db| {
            let slots = db.slots();
            db.parts().map(move |p| (ctrl_loc(p.loc), kv_off(slots) + slots * d.stride()))
        })
    })
}
