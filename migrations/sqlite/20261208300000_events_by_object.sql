-- Events of one object (`audit events --object`), and whether one of an action on it is
-- recorded already (a gate held is recorded once per next key, whichever replica sees it).
CREATE INDEX events_by_object ON events (object, action);
