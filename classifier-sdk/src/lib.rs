//! (lands with the classifier-sdk issue)
