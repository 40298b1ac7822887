//! The step graph and the one scheduler that walks it, for the agent's runs (`run`) and for
//! `hoist run` (`local`) alike.
//!
//! The graph is data: for each step, the steps it waits for ([`Pipeline::needs`]: the previous
//! step in file order, or its `needs`). [`Schedule`] is the pure state machine (which steps
//! may start now, what a finished step means for the ones waiting on it); [`walk`] drives it,
//! starting each step through one function it is given, so the executors (container, shell,
//! build, deploy) stay as they are. Like Woodpecker: a step whose needs failed or were
//! skipped is skipped, saying which; the steps that do not depend on a failed one still run.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;

/// The state of one step in a [`Schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started; waits for its needs.
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Never started, and never will: why.
    Skipped(String),
    /// Its needs succeeded, but it is a `when.manual` step nobody approved yet.
    Gated,
}

/// Which steps may start: each once every step it needs succeeded, at most `max_parallel` at
/// once, in file order among those ready.
#[derive(Debug)]
pub struct Schedule {
    names: Vec<String>,
    needs: Vec<Vec<usize>>,
    state: Vec<State>,
    max_parallel: usize,
    /// Set by [`Schedule::halt`]: nothing starts any more, for this reason.
    halted: Option<String>,
    /// The steps are a file-order chain: a skip names the step that failed, not "needs".
    file_order: bool,
    /// Per step: it waits for approval before it starts (`when.manual`)…
    manual: Vec<bool>,
    /// …and it was approved.
    approved: Vec<bool>,
    /// Steps that became [`State::Gated`] since [`Schedule::take_gated`] last looked.
    newly_gated: Vec<usize>,
}

impl Schedule {
    /// The schedule of a validated pipeline (its needs name existing steps and make no cycle).
    pub fn of(pipeline: &Pipeline, max_parallel: usize) -> Schedule {
        let needs = pipeline.needs();
        let names = pipeline.steps.iter().map(|s| s.name.clone()).collect();
        let mut schedule = Schedule::new(names, needs, max_parallel);
        schedule.manual = pipeline.steps.iter().map(|s| s.when.manual).collect();
        if pipeline.is_graph() {
            schedule
        } else {
            schedule.in_file_order()
        }
    }

    /// Say so when the needs are the file-order chain (step i waits for step i - 1): the steps
    /// after a failed one are skipped naming it, as "an earlier step failed".
    pub fn in_file_order(mut self) -> Schedule {
        self.file_order = true;
        self
    }

    /// A schedule of steps `names`, step i waiting for the steps `needs[i]`.
    pub fn new(names: Vec<String>, needs: Vec<Vec<usize>>, max_parallel: usize) -> Schedule {
        let state = vec![State::Waiting; names.len()];
        Schedule {
            manual: vec![false; names.len()],
            approved: vec![false; names.len()],
            newly_gated: Vec::new(),
            names,
            needs,
            state,
            max_parallel: max_parallel.max(1),
            halted: None,
            file_order: false,
        }
    }

    /// Step `step` waits for approval before it starts.
    pub fn gate(&mut self, step: usize) {
        self.manual[step] = true;
    }

    /// Step `step` was approved: a gated one may start now.
    pub fn approve(&mut self, step: usize) {
        self.approved[step] = true;
        if self.state[step] == State::Gated {
            self.state[step] = State::Waiting;
        }
    }

    /// Put a step back in the state a stored run recorded (a run resumed after an approval).
    pub fn restore(&mut self, step: usize, state: State) {
        self.state[step] = state;
    }

    /// Skip a step that has not started (its `when` does not match the push), and every
    /// step waiting on it; returns them all with their reasons, in file order.
    pub fn skip(&mut self, step: usize, why: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        if matches!(self.state[step], State::Waiting | State::Gated) {
            self.state[step] = State::Skipped(why.to_string());
            out.push((step, why.to_string()));
        }
        out.extend(self.propagate());
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// The steps that wait for approval now.
    pub fn gated(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| self.state[i] == State::Gated)
            .collect()
    }

    /// The steps that became gated since the last call.
    pub fn take_gated(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.newly_gated)
    }

    pub fn state(&self, step: usize) -> &State {
        &self.state[step]
    }

    /// The steps to start now, marked running: the ready ones, in file order, while fewer
    /// than `max_parallel` run.
    pub fn start(&mut self) -> Vec<usize> {
        if self.halted.is_some() {
            return Vec::new();
        }
        let mut running = self.count(|s| *s == State::Running);
        let mut out = Vec::new();
        for i in 0..self.state.len() {
            if running >= self.max_parallel {
                break;
            }
            let ready = self.state[i] == State::Waiting
                && self.needs[i]
                    .iter()
                    .all(|&n| self.state[n] == State::Succeeded);
            if ready && self.manual[i] && !self.approved[i] {
                self.state[i] = State::Gated;
                self.newly_gated.push(i);
            } else if ready {
                self.state[i] = State::Running;
                running += 1;
                out.push(i);
            }
        }
        out
    }

    /// Step `step` ended; returns the steps this skips (every step that waits for it,
    /// directly or through others, when it failed), each with its reason, in file order.
    pub fn finish(&mut self, step: usize, succeeded: bool) -> Vec<(usize, String)> {
        self.state[step] = if succeeded {
            State::Succeeded
        } else {
            State::Failed
        };
        self.propagate()
    }

    /// Start nothing more: every waiting step is skipped with `why`; running ones finish.
    pub fn halt(&mut self, why: &str) -> Vec<(usize, String)> {
        self.halted = Some(why.to_string());
        let mut out = Vec::new();
        for (i, s) in self.state.iter_mut().enumerate() {
            if matches!(*s, State::Waiting | State::Gated) {
                *s = State::Skipped(why.to_string());
                out.push((i, why.to_string()));
            }
        }
        out
    }

    /// Skip every waiting step with a need that failed or was skipped, until none is left.
    fn propagate(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        loop {
            let mut changed = false;
            for i in 0..self.state.len() {
                if self.state[i] != State::Waiting {
                    continue;
                }
                let blocked = self.needs[i].iter().find_map(|&n| match &self.state[n] {
                    State::Failed if self.file_order => {
                        Some(format!("an earlier step, {}, failed", self.names[n]))
                    }
                    // In file order, the reason of the first skipped step holds for the rest.
                    State::Skipped(why) if self.file_order => Some(why.clone()),
                    State::Failed => Some(format!("needs step {}, which failed", self.names[n])),
                    State::Skipped(_) => {
                        Some(format!("needs step {}, which was skipped", self.names[n]))
                    }
                    _ => None,
                });
                if let Some(why) = blocked {
                    self.state[i] = State::Skipped(why.clone());
                    out.push((i, why));
                    changed = true;
                }
            }
            if !changed {
                out.sort_by_key(|(i, _)| *i);
                return out;
            }
        }
    }

    /// Nothing runs and nothing can start any more.
    pub fn is_done(&self) -> bool {
        self.count(|s| *s == State::Running) == 0
            && (self.halted.is_some() || !self.state.contains(&State::Waiting))
    }

    fn count(&self, f: impl Fn(&State) -> bool) -> usize {
        self.state.iter().filter(|s| f(s)).count()
    }
}

/// How a step ended, for the scheduler: whether it succeeded, and whether the whole run must
/// start nothing more (the release train of an `atomic` pipeline), with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub succeeded: bool,
    pub halt: Option<String>,
}

impl Ended {
    pub fn of(succeeded: bool) -> Ended {
        Ended {
            succeeded,
            halt: None,
        }
    }
}

/// Walk `schedule` to its end: start each ready step with `start(index)` (its futures run
/// concurrently, in this task), report each skipped step to `skipped(index, reason)` and each
/// step that now waits for approval to `gated(index)` (the walk ends when nothing runs, so a
/// run whose remaining steps wait for approval returns with them [`State::Gated`]), and
/// stop starting steps once `cancel` fires (the running ones see the same token and stop;
/// the ones never started stay `Waiting`). Returns the final schedule.
pub async fn walk<S, SF, K, KF, G, GF>(
    mut schedule: Schedule,
    cancel: &CancellationToken,
    mut start: S,
    mut skipped: K,
    mut gated: G,
) -> Schedule
where
    S: FnMut(usize) -> SF,
    SF: Future<Output = Ended>,
    K: FnMut(usize, String) -> KF,
    KF: Future<Output = ()>,
    G: FnMut(usize) -> GF,
    GF: Future<Output = ()>,
{
    let mut running = FuturesUnordered::new();
    loop {
        if !cancel.is_cancelled() {
            for i in schedule.start() {
                let step = start(i);
                running.push(async move { (i, step.await) });
            }
            for i in schedule.take_gated() {
                gated(i).await;
            }
        }
        let Some((i, ended)) = running.next().await else {
            // Nothing runs: either everything ended, or nothing more can start.
            return schedule;
        };
        let mut skips = schedule.finish(i, ended.succeeded);
        if let Some(why) = &ended.halt {
            skips.extend(schedule.halt(why));
        }
        for (k, why) in skips {
            skipped(k, why).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn file_order_is_a_chain_and_a_failure_skips_the_rest() {
        let needs = vec![vec![], vec![0], vec![1], vec![2]];
        let mut s = Schedule::new(names(4), needs, 4).in_file_order();
        assert_eq!(s.start(), vec![0]);
        assert_eq!(s.start(), Vec::<usize>::new());
        assert_eq!(s.finish(0, true), vec![]);
        assert_eq!(s.start(), vec![1]);
        let why = "an earlier step, s1, failed".to_string();
        assert_eq!(s.finish(1, false), vec![(2, why.clone()), (3, why.clone())]);
        assert!(s.is_done());
        assert_eq!(s.state(3), &State::Skipped(why));
    }

    #[test]
    fn independent_steps_start_together_up_to_the_limit() {
        // s0, s1, s2 need nothing; s3 needs s0 and s1; s4 needs s3.
        let needs = vec![vec![], vec![], vec![], vec![0, 1], vec![3]];
        let mut s = Schedule::new(names(5), needs, 2);
        assert_eq!(s.start(), vec![0, 1]);
        assert_eq!(s.finish(1, true), vec![]);
        assert_eq!(s.start(), vec![2]);
        assert_eq!(s.finish(0, true), vec![]);
        assert_eq!(s.start(), vec![3]);
        assert!(!s.is_done());
        // A failure skips its dependants, transitively; the independent step still finishes.
        assert_eq!(
            s.finish(3, false),
            vec![(4, "needs step s3, which failed".to_string())]
        );
        assert!(!s.is_done());
        assert_eq!(s.finish(2, true), vec![]);
        assert!(s.is_done());
    }

    #[test]
    fn a_skip_cascades_naming_the_skipped_need() {
        let needs = vec![vec![], vec![0], vec![1], vec![]];
        let mut s = Schedule::new(names(4), needs, 4);
        assert_eq!(s.start(), vec![0, 3]);
        assert_eq!(
            s.finish(0, false),
            vec![
                (1, "needs step s0, which failed".to_string()),
                (2, "needs step s1, which was skipped".to_string()),
            ]
        );
        assert_eq!(s.finish(3, true), vec![]);
        assert!(s.is_done());
    }

    #[test]
    fn a_halt_starts_nothing_more() {
        let needs = vec![vec![], vec![], vec![0]];
        let mut s = Schedule::new(names(3), needs, 1);
        assert_eq!(s.start(), vec![0]);
        assert_eq!(
            s.halt("the train stopped"),
            vec![
                (1, "the train stopped".to_string()),
                (2, "the train stopped".to_string())
            ]
        );
        assert!(!s.is_done());
        assert_eq!(s.finish(0, true), vec![]);
        assert_eq!(s.start(), Vec::<usize>::new());
        assert!(s.is_done());
    }

    #[test]
    fn a_manual_step_waits_for_approval_and_a_when_skip_cascades() {
        // s0; s1 manual, needs s0; s2 needs s1; s3 skipped by `when`; s4 needs s3.
        let needs = vec![vec![], vec![0], vec![1], vec![], vec![3]];
        let mut s = Schedule::new(names(5), needs, 4);
        s.gate(1);
        assert_eq!(
            s.skip(3, "when: no match"),
            vec![
                (3, "when: no match".to_string()),
                (4, "needs step s3, which was skipped".to_string())
            ]
        );
        assert_eq!(s.start(), vec![0]);
        assert_eq!(s.finish(0, true), vec![]);
        assert_eq!(s.start(), Vec::<usize>::new());
        assert_eq!(s.take_gated(), vec![1]);
        assert_eq!(s.gated(), vec![1]);
        s.approve(1);
        assert_eq!(s.start(), vec![1]);
        assert_eq!(s.finish(1, true), vec![]);
        assert_eq!(s.start(), vec![2]);
    }

    #[tokio::test]
    async fn walk_runs_independent_steps_at_once_and_stops_on_cancel() {
        use std::sync::Mutex;
        use std::time::Duration;
        // s0 and s1 at once (each waits for the other to have started); s2 after both.
        let needs = vec![vec![], vec![], vec![0, 1]];
        let started = Mutex::new(Vec::new());
        let both = tokio::sync::Barrier::new(2);
        let cancel = CancellationToken::new();
        let s = walk(
            Schedule::new(names(3), needs, 4),
            &cancel,
            |i| {
                started.lock().unwrap().push(i);
                let both = &both;
                async move {
                    if i < 2 {
                        tokio::time::timeout(Duration::from_secs(5), both.wait())
                            .await
                            .expect("the two independent steps run at once");
                    }
                    Ended::of(true)
                }
            },
            |_, _| async {},
            |_| async {},
        )
        .await;
        assert!(s.is_done());
        assert_eq!(*started.lock().unwrap(), vec![0, 1, 2]);

        // Cancelled while s0 runs: s1 never starts.
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let s = walk(
            Schedule::new(names(2), vec![vec![], vec![0]], 4),
            &cancel,
            |_| {
                c.cancel();
                async { Ended::of(true) }
            },
            |_, _| async {},
            |_| async {},
        )
        .await;
        assert_eq!(s.state(1), &State::Waiting);
    }
}
