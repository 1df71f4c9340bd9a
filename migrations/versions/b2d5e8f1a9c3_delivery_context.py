"""keep each delivery's template fields

Revision ID: b2d5e8f1a9c3
Revises: 7a41c2d9e5b0
Create Date: 2026-12-05 00:15:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b2d5e8f1a9c3'
down_revision = '7a41c2d9e5b0'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('context', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('context')
