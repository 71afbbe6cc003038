//! A pool of open stores for servers: a request borrows a connection instead of opening
//! the database (and taking the migration lock) each time. Built on r2d2; a connection is
//! checked with a ping when it is borrowed, so one the database dropped is replaced.

use std::time::Duration;

use crate::{Result, Store, StoreError, StoreLocation};

/// Opens and checks the pool's stores (public only as part of [`PooledStore`]'s type).
pub struct Manager(StoreLocation);

impl r2d2::ManageConnection for Manager {
    type Connection = Box<dyn Store>;
    type Error = StoreError;

    fn connect(&self) -> Result<Box<dyn Store>> {
        self.0.open()
    }

    fn is_valid(&self, store: &mut Box<dyn Store>) -> Result<()> {
        store.ping()
    }

    fn has_broken(&self, _: &mut Box<dyn Store>) -> bool {
        false
    }
}

/// Open stores of one database, shared by the threads of a server.
#[derive(Clone)]
pub struct StorePool {
    pool: r2d2::Pool<Manager>,
    location: StoreLocation,
}

/// A store borrowed from a [`StorePool`]; it goes back when dropped.
pub type PooledStore = r2d2::PooledConnection<Manager>;

impl StorePool {
    /// A pool of at most `max` open stores of `location`. Nothing is opened until first
    /// used: open the location once beforehand to report a wrong URL at start.
    pub fn new(location: StoreLocation, max: u32) -> StorePool {
        let pool = r2d2::Pool::builder()
            .max_size(max.max(1))
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(30))
            .build_unchecked(Manager(location.clone()));
        StorePool { pool, location }
    }

    /// Borrow a store, waiting for a free one (at most 30 s).
    pub fn get(&self) -> Result<PooledStore> {
        self.pool.get().map_err(|e| StoreError::Pool { location: self.location.to_string(), message: e.to_string() })
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = StorePool::new(StoreLocation::Sqlite(dir.path().join("s.db")), 2);
        {
            let mut s = pool.get().unwrap();
            s.set_value("p", "k", "v").unwrap();
        }
        let (mut a, mut b) = (pool.get().unwrap(), pool.get().unwrap());
        assert_eq!(a.get_value("p", "k").unwrap().as_deref(), Some("v"));
        assert_eq!(b.get_value("p", "k").unwrap().as_deref(), Some("v"));
        assert_eq!(pool.pool.state().connections, 2, "two borrowed at once, none opened beyond the cap");
    }
}
