//! How two versions of a service compare: whether they are the same, and
//! where their instances differ.

use std::sync::Arc;

use crate::model::{Endpoint, Instance, Service};

/// The same service fields but for the instances.
pub(super) fn same_fields(a: &Service, b: &Service) -> bool {
    a.name == b.name
        && a.protocol == b.protocol
        && a.tags == b.tags
        && a.max_answers == b.max_answers
}

/// The instances of `old` and of `new` between their longest common start
/// and end, each as a service of its own.
pub(super) fn differing(old: &Service, new: &Service) -> (Service, Service) {
    let (a, b) = (&old.instances, &new.instances);
    let (start, end) = differing_bounds(old, new);
    (
        old.part(start..a.len() - end),
        new.part(start..b.len() - end),
    )
}

/// How many instances `old` and `new` have in common at their start, and
/// then at their end. Where the two lists are the same chunk of memory
/// they are passed over a chunk at a time: after a change to a few
/// instances of a large service, all but the chunks around them are.
pub(super) fn differing_bounds(old: &Service, new: &Service) -> (usize, usize) {
    let (a, b) = (&old.instances, &new.instances);
    let n = a.len().min(b.len());
    let (mut fa, mut fb) = (a.focus(), b.focus());
    let mut start = 0;
    while start < n {
        let (at, x) = fa.chunk_at(start);
        let x = &x[start - at.start..];
        let (at, y) = fb.chunk_at(start);
        let y = &y[start - at.start..];
        let len = x.len().min(y.len()).min(n - start);
        let (x, y) = (&x[..len], &y[..len]);
        let same = match std::ptr::eq(x.as_ptr(), y.as_ptr()) {
            true => len,
            false => (x.iter().zip(y))
                .take_while(|(i, j)| same_instance(i, j))
                .count(),
        };
        start += same;
        if same < len {
            break;
        }
    }
    // From the end, up to what the start has in common.
    let most = n - start;
    let mut end = 0;
    while end < most {
        let (a_to, b_to) = (a.len() - end, b.len() - end);
        let (at, x) = fa.chunk_at(a_to - 1);
        let x = &x[..a_to - at.start];
        let (at, y) = fb.chunk_at(b_to - 1);
        let y = &y[..b_to - at.start];
        let len = x.len().min(y.len()).min(most - end);
        let (x, y) = (&x[x.len() - len..], &y[y.len() - len..]);
        let same = match std::ptr::eq(x.as_ptr(), y.as_ptr()) {
            true => len,
            false => (x.iter().rev().zip(y.iter().rev()))
                .take_while(|(i, j)| same_instance(i, j))
                .count(),
        };
        end += same;
        if same < len {
            break;
        }
    }
    (start, end)
}

/// Equal, the letter case of a target name included. Most instances of a
/// service are the same `Arc` before and after a change: those are not
/// looked into.
pub(super) fn same_instance(a: &Arc<Instance>, b: &Arc<Instance>) -> bool {
    Arc::ptr_eq(a, b)
        || **a == **b
            && match (&a.endpoint, &b.endpoint) {
                (Endpoint::Target(m), Endpoint::Target(n)) => m.eq_case(n),
                _ => true,
            }
}

/// Equal, the letter case of target names included.
pub(super) fn same_service(a: &Service, b: &Service) -> bool {
    same_fields(a, b)
        && a.check == b.check
        && a.instances.len() == b.instances.len()
        && differing_bounds(a, b).0 == a.instances.len()
}
