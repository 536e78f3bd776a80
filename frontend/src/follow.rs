//! Keeping the message list at the bottom only when the reader is there.

/// How close to the bottom (px) still counts as "at the bottom".
pub const BOTTOM_SLACK_PX: f64 = 40.0;

/// Scroll-follow state of the message list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    /// The reader is at the bottom: new lines scroll into view.
    pub at_bottom: bool,
    /// Lines that arrived while the reader was scrolled up.
    pub unseen: u32,
}

impl Default for Follow {
    fn default() -> Self {
        Self { at_bottom: true, unseen: 0 }
    }
}

impl Follow {
    /// The reader scrolled; `gap` is the distance from the bottom in px.
    pub fn scrolled(&mut self, gap: f64) {
        self.at_bottom = gap <= BOTTOM_SLACK_PX;
        if self.at_bottom {
            self.unseen = 0;
        }
    }

    /// `added` lines arrived. Returns whether to scroll to the bottom.
    pub fn arrived(&mut self, added: u32) -> bool {
        if self.at_bottom {
            true
        } else {
            self.unseen += added;
            false
        }
    }

    /// The reader jumped to the bottom ("N new messages").
    pub fn jumped(&mut self) {
        self.at_bottom = true;
        self.unseen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_only_at_the_bottom() {
        let mut f = Follow::default();
        assert!(f.arrived(1));
        f.scrolled(300.0);
        assert!(!f.arrived(2));
        assert!(!f.arrived(1));
        assert_eq!(f.unseen, 3);
        f.scrolled(10.0);
        assert_eq!(f.unseen, 0);
        assert!(f.arrived(1));
        f.scrolled(500.0);
        f.arrived(4);
        f.jumped();
        assert_eq!(f, Follow::default());
    }
}
