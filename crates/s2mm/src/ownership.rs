//! Page ownership: the pure transition function behind hyp-core's memory-sharing calls.
//!
//! Each 4 KiB page has, per component (host, one guest, the hypervisor), a [`CompState`]:
//! `N` no access, `O` owned, `SO` shared-owned, `SB` shared-borrowed. Mapped states are stored in
//! the software bits of that component's stage-2 (or EL2 stage-1) leaf ([`PageState`]); a host
//! page in state `N` while a guest owns it carries the guest's [`crate::OwnerId`] as an owner
//! annotation in the invalid host entry. hyp-core reads the states, calls [`transition`], and
//! only on `Ok` writes the new states back with `Stage2::map` / `set_state` / `set_annotation`.
//!
//! [`transition`] is pure and total: every (state, transition, requester) combination not in the
//! table below is an error, and an error changes nothing (there is nothing to change: the
//! function only computes). `tests/ownership.rs` parses this table and checks all
//! 4 × 4 × 4 states × 7 transitions × 3 requesters = 1344 combinations against it.
//!
//! | transition   | requester | host | guest | hyp | → host | → guest | → hyp |
//! |--------------|-----------|------|-------|-----|--------|---------|-------|
//! | HostDonate   | Host      | O    | N     | N   | N      | O       | N     |
//! | HostLend     | Host      | O    | N     | N   | SO     | SB      | N     |
//! | GuestShare   | Guest     | N    | O     | N   | SB     | SO      | N     |
//! | GuestUnshare | Guest     | SB   | SO    | N   | N      | O       | N     |
//! | Reclaim      | Host      | N    | O     | N   | O      | N       | N     |
//! | Reclaim      | Host      | SO   | SB    | N   | O      | N       | N     |
//! | Reclaim      | Host      | SB   | SO    | N   | O      | N       | N     |
//! | HypShare     | Host      | O    | N     | N   | SO     | N       | SB    |
//! | HypUnshare   | Host      | SO   | N     | SB  | O      | N       | N     |
//!
//! Notes:
//! - `Reclaim` is only legal after the guest was destroyed, and hyp-core must scrub the page
//!   (zero it and clean it to PoC) before the host regains access: both are the caller's duty,
//!   not page state.
//! - `HostDonate` leaves the host entry invalid with the guest's owner annotation.

use crate::desc::PageState;

/// Access state of one component for one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompState {
    /// `N`: not mapped for this component.
    NoAccess,
    /// `O`: exclusively owned.
    Owned,
    /// `SO`: owned and shared.
    SharedOwned,
    /// `SB`: borrowed from the owner.
    SharedBorrowed,
}

impl CompState {
    /// All states, for exhaustive tests.
    pub const ALL: [Self; 4] = [
        Self::NoAccess,
        Self::Owned,
        Self::SharedOwned,
        Self::SharedBorrowed,
    ];

    /// The state of a mapped page, or `NoAccess` when unmapped.
    #[must_use]
    pub const fn from_mapping(state: Option<PageState>) -> Self {
        match state {
            None => Self::NoAccess,
            Some(PageState::Owned) => Self::Owned,
            Some(PageState::SharedOwned) => Self::SharedOwned,
            Some(PageState::SharedBorrowed) => Self::SharedBorrowed,
        }
    }

    /// The software-bit state to map with, or `None` for no mapping.
    #[must_use]
    pub const fn page_state(self) -> Option<PageState> {
        match self {
            Self::NoAccess => None,
            Self::Owned => Some(PageState::Owned),
            Self::SharedOwned => Some(PageState::SharedOwned),
            Self::SharedBorrowed => Some(PageState::SharedBorrowed),
        }
    }
}

/// States of one page in the host, one guest and the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageOwnership {
    /// Host stage 2.
    pub host: CompState,
    /// The guest's stage 2.
    pub guest: CompState,
    /// The hypervisor's EL2 stage 1.
    pub hyp: CompState,
}

/// A requested ownership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Host gives a page to a guest for good (until reclaim).
    HostDonate,
    /// Host lends a page to a guest, keeping access.
    HostLend,
    /// Guest shares one of its pages with the host.
    GuestShare,
    /// Guest revokes a share.
    GuestUnshare,
    /// After the guest's destruction, the host takes the page back (scrubbed by hyp-core).
    Reclaim,
    /// Host shares a page with the hypervisor.
    HypShare,
    /// Host revokes a share with the hypervisor.
    HypUnshare,
}

impl Transition {
    /// All transitions, for exhaustive tests.
    pub const ALL: [Self; 7] = [
        Self::HostDonate,
        Self::HostLend,
        Self::GuestShare,
        Self::GuestUnshare,
        Self::Reclaim,
        Self::HypShare,
        Self::HypUnshare,
    ];
}

/// Who asks for a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requester {
    /// The host kernel.
    Host,
    /// The guest that owns (or would own) the page.
    Guest,
    /// The hypervisor itself.
    Hyp,
}

impl Requester {
    /// All requesters, for exhaustive tests.
    pub const ALL: [Self; 3] = [Self::Host, Self::Guest, Self::Hyp];
}

/// Why a transition was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnershipError {
    /// This requester may not ask for this transition.
    NotPermitted,
    /// The page is not in a state the transition starts from.
    InvalidState,
}

/// Computes the states after `t` requested by `req`, following the table in the module docs.
///
/// # Errors
///
/// [`OwnershipError::NotPermitted`] when `req` is not the requester of `t`;
/// [`OwnershipError::InvalidState`] when `cur` is not a starting state of `t`.
pub fn transition(
    cur: PageOwnership,
    t: Transition,
    req: Requester,
) -> Result<PageOwnership, OwnershipError> {
    use CompState::{NoAccess as N, Owned as O, SharedBorrowed as SB, SharedOwned as SO};
    let allowed = match t {
        Transition::GuestShare | Transition::GuestUnshare => matches!(req, Requester::Guest),
        _ => matches!(req, Requester::Host),
    };
    if !allowed {
        return Err(OwnershipError::NotPermitted);
    }
    let next = |host, guest, hyp| Ok(PageOwnership { host, guest, hyp });
    match (t, cur.host, cur.guest, cur.hyp) {
        (Transition::HostDonate, O, N, N) => next(N, O, N),
        (Transition::HostLend, O, N, N) => next(SO, SB, N),
        (Transition::GuestShare, N, O, N) => next(SB, SO, N),
        (Transition::GuestUnshare, SB, SO, N) => next(N, O, N),
        (Transition::Reclaim, N, O, N)
        | (Transition::Reclaim, SO, SB, N)
        | (Transition::Reclaim, SB, SO, N) => next(O, N, N),
        (Transition::HypShare, O, N, N) => next(SO, N, SB),
        (Transition::HypUnshare, SO, N, SB) => next(O, N, N),
        _ => Err(OwnershipError::InvalidState),
    }
}
