//! Progress of a long command on stderr: a bar redrawn in place when stderr is a terminal, and one plain
//! line per step in any case (so logs and pipes get a readable record). Counts only, never identifiers.

use std::io::{IsTerminal, Write};

use crate::storage::transfer::Imported;

pub struct Progress {
    name: &'static str,
    total: u64,
    done: u64,
    bar: bool,
}

const WIDTH: u64 = 30;

impl Progress {
    pub fn start(name: &'static str, total: u64) -> Progress {
        let mut progress = Progress { name, total, done: 0, bar: std::io::stderr().is_terminal() };
        progress.draw();
        progress
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        self.draw();
    }

    fn draw(&mut self) {
        if !self.bar {
            return;
        }
        let filled = (self.done.min(self.total) * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{:<20} [{bar}] {}/{}", self.name, self.done, self.total);
        let _ = err.flush();
    }

    /// Ends a step that the following lines summarise: clears the bar, prints nothing.
    pub fn end(self) {
        if self.bar {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }

    /// Ends the step with its line: how many the export held, how many were written, how many were there.
    pub fn finish(self, imported: Imported) {
        let mut err = std::io::stderr().lock();
        if self.bar {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(
            err,
            "{}: {} in the export, {} new, {} already there",
            self.name, self.total, imported.new, imported.existing
        );
    }
}
