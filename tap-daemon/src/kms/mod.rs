//! Vocabulary shared by everything that touches KMS objects: bounded release of what we created,
//! recognising our own objects (orphans), and the tags we write.

pub mod orphans;
pub mod release;
