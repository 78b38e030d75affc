//! Client histories: key-value operations with their call and return times.
//!
//! A history is what clients observed, not what the cluster did. Each operation has a call time and,
//! if the client heard back, a return time and an output. An operation whose client timed out (or
//! crashed) has no return: it may have taken effect at any time after its call, or never.

use std::fmt;

/// A key of the simulated key-value store (the key space is small on purpose, to force conflicts).
pub type Key = u64;
/// A value of the simulated key-value store.
pub type Value = u64;

/// An operation a client asks of the key-value store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the value of a key.
    Get {
        /// The key read.
        key: Key,
    },
    /// Write a value under a key.
    Put {
        /// The key written.
        key: Key,
        /// The value written.
        value: Value,
    },
    /// Write `new` under `key` only if its current value is `expected` (`None`: the key is absent).
    CompareAndSet {
        /// The key.
        key: Key,
        /// The value the key must hold for the write to happen.
        expected: Option<Value>,
        /// The value written on success.
        new: Value,
    },
    /// Remove a key.
    Delete {
        /// The key removed.
        key: Key,
    },
}

impl KvInput {
    /// The single key this operation touches.
    pub fn key(&self) -> Key {
        match *self {
            KvInput::Get { key }
            | KvInput::Put { key, .. }
            | KvInput::CompareAndSet { key, .. }
            | KvInput::Delete { key } => key,
        }
    }

    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, KvInput::Get { .. })
    }
}

impl fmt::Display for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Get { key } => write!(f, "get({key})"),
            KvInput::Put { key, value } => write!(f, "put({key}, {value})"),
            KvInput::CompareAndSet { key, expected, new } => {
                write!(f, "cas({key}, {}, {new})", show_value(*expected))
            }
            KvInput::Delete { key } => write!(f, "delete({key})"),
        }
    }
}

/// What the store answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The value a get observed (`None`: absent).
    Get(Option<Value>),
    /// A put was applied.
    Put,
    /// Whether a compare-and-set wrote.
    CompareAndSet(bool),
    /// A delete was applied.
    Delete,
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Get(v) => write!(f, "{}", show_value(*v)),
            KvOutput::Put | KvOutput::Delete => write!(f, "ok"),
            KvOutput::CompareAndSet(true) => write!(f, "swapped"),
            KvOutput::CompareAndSet(false) => write!(f, "not swapped"),
        }
    }
}

pub(crate) fn show_value(v: Option<Value>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "absent".to_string(),
    }
}

/// What a read promises, and so which specification the checker holds it to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Takes effect between its call and its return, as every write does.
    #[default]
    Linearizable,
    /// Session-consistent: returns a state at least as new as everything its client observed
    /// before (its own completed writes and reads, on any key), and one that existed by its return;
    /// other clients' operations need not be visible yet.
    Sequential,
}

/// One client operation as observed by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it: its session (its operations are ordered by their call times).
    pub client: u64,
    /// What was asked.
    pub input: KvInput,
    /// When the client issued it.
    pub call: u64,
    /// When and what the client heard back; `None` if it never did (timeout, crash).
    pub completion: Option<(u64, KvOutput)>,
    /// What the operation promises ([`Consistency::Sequential`] only for gets).
    pub consistency: Consistency,
}

impl Operation {
    /// An operation that returned `output` at time `ret`.
    pub fn completed(client: u64, input: KvInput, call: u64, ret: u64, output: KvOutput) -> Self {
        Operation {
            client,
            input,
            call,
            completion: Some((ret, output)),
            consistency: Consistency::Linearizable,
        }
    }

    /// The same operation held to `consistency`.
    pub fn with_consistency(self, consistency: Consistency) -> Self {
        Operation {
            consistency,
            ..self
        }
    }

    /// Whether this is a session-consistent read.
    pub fn is_sequential(&self) -> bool {
        self.consistency == Consistency::Sequential
    }

    /// An operation whose outcome the client never learned.
    pub fn unknown(client: u64, input: KvInput, call: u64) -> Self {
        Operation {
            client,
            input,
            call,
            completion: None,
            consistency: Consistency::Linearizable,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_sequential() {
            write!(f, "(sequential) ")?;
        }
        match self.completion {
            Some((ret, out)) => write!(
                f,
                "client {} {} -> {} [call {}, return {}]",
                self.client, self.input, out, self.call, ret
            ),
            None => write!(
                f,
                "client {} {} -> ? [call {}, never returned]",
                self.client, self.input, self.call
            ),
        }
    }
}

/// A recorder of client operations with a logical clock, so every call and return gets its own time.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Operation>,
    open: Vec<bool>,
    clock: u64,
}

/// Identifies an operation recorded by [`History::invoke`] until it is completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// The id of the `index`-th operation recorded (its position in [`History::operations`]).
    pub fn from_index(index: usize) -> Self {
        OpId(index)
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records that `client` issued `input` now.
    pub fn invoke(&mut self, client: u64, input: KvInput) -> OpId {
        self.invoke_with(client, input, Consistency::Linearizable)
    }

    /// Records that `client` issued `input` now, held to `consistency`.
    pub fn invoke_with(&mut self, client: u64, input: KvInput, consistency: Consistency) -> OpId {
        let call = self.tick();
        self.ops
            .push(Operation::unknown(client, input, call).with_consistency(consistency));
        self.open.push(true);
        OpId(self.ops.len() - 1)
    }

    /// Records that the operation returned `output` now. Completing an operation twice (or an
    /// unknown id) is ignored: the first answer a client accepts is the one it saw.
    pub fn complete(&mut self, id: OpId, output: KvOutput) {
        if self.open.get(id.0).copied() == Some(true) {
            let ret = self.tick();
            self.ops[id.0].completion = Some((ret, output));
            self.open[id.0] = false;
        }
    }

    /// Records that the client gave up on the operation: its outcome stays unknown.
    pub fn abandon(&mut self, id: OpId) {
        if let Some(open) = self.open.get_mut(id.0) {
            *open = false;
        }
    }

    /// The input of a recorded operation.
    pub fn input(&self, id: OpId) -> Option<KvInput> {
        self.ops.get(id.0).map(|op| op.input)
    }

    /// All operations recorded so far, in call order.
    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    /// How many operations returned an answer.
    pub fn completed_count(&self) -> usize {
        self.ops.iter().filter(|op| op.completion.is_some()).count()
    }
}
