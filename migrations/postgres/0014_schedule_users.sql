-- A schedule made by a signed-in user (the dashboard) runs as that user: each fire checks that the user is
-- still a member of the organization and that their current role may run agents. NULL for schedules made
-- by an API key or an admin token. A deleted user leaves the column NULL, and the next fire then skips the
-- occurrence and disables the schedule with the reason.
ALTER TABLE schedules ADD COLUMN user_id TEXT REFERENCES users (id) ON DELETE SET NULL;
