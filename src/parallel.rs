//! Work spread over the cores in order: how a large zone file is parsed
//! and a large zone encoded, each in runs whose results keep their order.

/// The cores this process may use (1 when that cannot be known).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `work` cut into `threads` runs, in order, each given to `f` on a thread
/// of its own (on this one when `threads` is 1), and their results in the
/// order of the runs. A panic in a run is raised again here.
pub fn in_runs<T: Sync, R: Send>(
    work: &[T],
    threads: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || work.is_empty() {
        return vec![f(work)];
    }
    let f = &f;
    std::thread::scope(|scope| {
        let running: Vec<_> = work
            .chunks(work.len().div_ceil(threads))
            .map(|run| scope.spawn(move || f(run)))
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_keep_their_order_on_any_number_of_threads() {
        let work: Vec<u32> = (0..1000).collect();
        for threads in [1, 2, 3, 7, 2000] {
            let sums = in_runs(&work, threads, |run| run.to_vec());
            assert_eq!(sums.concat(), work, "{threads} threads");
            assert_eq!(sums.len(), threads.min(1000), "{threads} threads");
        }
        assert_eq!(in_runs(&[] as &[u32], 4, <[u32]>::len), vec![0]);
    }
}
