//! Several `tilebox server` replicas on one PostgreSQL database, each its own process on
//! its own free port, killed when dropped (the database is dropped after them).

use super::TestServer;
use super::postgres::TestDatabase;

/// `count` servers started with `--database` on a fresh database.
pub struct Replicas {
    pub servers: Vec<TestServer>,
    // Last, so the servers stop before their database is dropped.
    pub database: TestDatabase,
}

impl Replicas {
    /// Starts `count` replicas on a fresh database, each with `args` besides `--database`.
    pub fn start(count: usize, args: &[&str]) -> Self {
        Self::start_on(TestDatabase::create(), count, args)
    }

    /// Starts `count` replicas on `database`.
    pub fn start_on(database: TestDatabase, count: usize, args: &[&str]) -> Self {
        let servers = (0..count)
            .map(|_| {
                let mut all = vec!["--database", database.url.as_str()];
                all.extend_from_slice(args);
                TestServer::start_with(&all)
            })
            .collect();
        Self { servers, database }
    }

    pub fn server(&self, index: usize) -> &TestServer {
        &self.servers[index]
    }
}
